// pgjdbc checks for tests/integration/apps.rs: the same transcript must come out straight
// from PostgreSQL and through tokengate. Usage: java -cp postgresql.jar JdbcCheck.java PORT
// (the driver's default settings: sslmode=prefer; prepareThreshold=1 so that the second run
// of a statement uses a named server-side statement).
import java.sql.*;
import java.util.*;

public class JdbcCheck {
    static final List<String> OUT = new ArrayList<>();

    interface Step {
        Object run() throws Exception;
    }

    static void run(String label, Step s) {
        try {
            OUT.add(label + ": " + s.run());
        } catch (SQLException e) {
            OUT.add(label + ": ERROR " + e.getSQLState() + " " + e.getMessage());
        } catch (Exception e) {
            OUT.add(label + ": EXCEPTION " + e);
        }
    }

    static String rows(ResultSet rs) throws SQLException {
        StringBuilder b = new StringBuilder();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            b.append('[');
            for (int i = 1; i <= n; i++) {
                if (i > 1) b.append(',');
                b.append(rs.getString(i));
            }
            b.append(']');
        }
        return b.toString();
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/crm?prepareThreshold=1";
        try (Connection c = DriverManager.getConnection(url, "support", "support-demo-pw")) {
            run("simple", () -> {
                try (Statement st = c.createStatement()) {
                    return rows(st.executeQuery("SELECT id, city FROM customers ORDER BY id LIMIT 3"));
                }
            });
            run("prepared", () -> {
                StringBuilder b = new StringBuilder();
                try (PreparedStatement ps = c.prepareStatement("SELECT id, city FROM customers WHERE id = ?")) {
                    for (int i = 1; i <= 3; i++) {
                        ps.setInt(1, i);
                        b.append(rows(ps.executeQuery()));
                    }
                }
                return b;
            });
            run("rsmeta", () -> {
                try (Statement st = c.createStatement()) {
                    ResultSetMetaData m = st.executeQuery("SELECT id, city FROM customers LIMIT 1").getMetaData();
                    StringBuilder b = new StringBuilder();
                    for (int i = 1; i <= m.getColumnCount(); i++) {
                        b.append(m.getColumnName(i)).append(' ').append(m.getColumnTypeName(i)).append(' ')
                            .append(m.isNullable(i)).append(' ').append(m.getTableName(i)).append(' ')
                            .append(m.isAutoIncrement(i)).append(';');
                    }
                    return b;
                }
            });
            run("tables", () -> rows(c.getMetaData().getTables(null, "public", "%", new String[] {"TABLE"})));
            run("columns", () -> {
                ResultSet rs = c.getMetaData().getColumns(null, "public", "customers", "%");
                StringBuilder b = new StringBuilder();
                while (rs.next()) {
                    b.append(rs.getString("COLUMN_NAME")).append(' ').append(rs.getString("TYPE_NAME")).append(';');
                }
                return b;
            });
            run("keys", () -> rows(c.getMetaData().getPrimaryKeys(null, "public", "customers")));
            run("product", () -> c.getMetaData().getDatabaseProductName() + " "
                + c.getMetaData().getDatabaseMajorVersion());
            run("types", () -> {
                try (Statement st = c.createStatement()) {
                    ResultSet rs = st.executeQuery("SELECT 1.5::numeric, '\\x0102'::bytea, '{1,2}'::int[],"
                        + " '2024-01-02 03:04:05+00'::timestamptz AT TIME ZONE 'UTC', '{\"k\": 1}'::jsonb, NULL::text");
                    rs.next();
                    return rs.getBigDecimal(1) + " " + Arrays.toString(rs.getBytes(2)) + " "
                        + Arrays.toString((Integer[]) rs.getArray(3).getArray()) + " " + rs.getTimestamp(4) + " "
                        + rs.getString(5) + " " + rs.getString(6);
                }
            });
            run("batch", () -> {
                try (Statement st = c.createStatement()) {
                    st.execute("CREATE TEMP TABLE jt (id int PRIMARY KEY, v text)");
                }
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO jt VALUES (?, ?)")) {
                    for (int i = 1; i <= 3; i++) {
                        ps.setInt(1, i);
                        ps.setString(2, "v" + i);
                        ps.addBatch();
                    }
                    return Arrays.toString(ps.executeBatch());
                }
            });
            run("batch-error", () -> {
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO jt VALUES (?, ?)")) {
                    for (int i : new int[] {10, 1, 11}) {
                        ps.setInt(1, i);
                        ps.setString(2, "x");
                        ps.addBatch();
                    }
                    try {
                        return Arrays.toString(ps.executeBatch());
                    } catch (BatchUpdateException e) {
                        return "batch " + e.getSQLState() + " " + Arrays.toString(e.getUpdateCounts());
                    }
                }
            });
            run("tx", () -> {
                c.setAutoCommit(false);
                try (Statement st = c.createStatement()) {
                    st.execute("INSERT INTO jt VALUES (20, 'a')");
                    Savepoint sp = c.setSavepoint();
                    String dup = "none";
                    try {
                        st.execute("INSERT INTO jt VALUES (20, 'dup')");
                    } catch (SQLException e) {
                        dup = e.getSQLState();
                        c.rollback(sp);
                    }
                    c.commit();
                    return dup + " " + rows(st.executeQuery("SELECT id, v FROM jt ORDER BY id"));
                } finally {
                    c.commit();
                    c.setAutoCommit(true);
                }
            });
            run("fetchsize", () -> {
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("SELECT id, city FROM customers ORDER BY id LIMIT 7")) {
                    ps.setFetchSize(2);
                    return rows(ps.executeQuery());
                } finally {
                    c.commit();
                    c.setAutoCommit(true);
                }
            });
            run("generated", () -> {
                try (Statement st = c.createStatement()) {
                    st.executeUpdate("INSERT INTO jt VALUES (30, 'g')", Statement.RETURN_GENERATED_KEYS);
                    return rows(st.getGeneratedKeys());
                }
            });
            run("typo", () -> {
                try (Statement st = c.createStatement()) {
                    return rows(st.executeQuery("SELECT nme FROM jt"));
                }
            });
            run("pid", () -> {
                try (Statement st = c.createStatement()) {
                    ResultSet rs = st.executeQuery("SELECT pg_backend_pid()");
                    rs.next();
                    return rs.getInt(1) == c.unwrap(org.postgresql.PGConnection.class).getBackendPID();
                }
            });
            run("notify", () -> {
                try (Statement st = c.createStatement()) {
                    st.execute("LISTEN jchan");
                    st.execute("NOTIFY jchan, 'hello'");
                    org.postgresql.PGNotification[] n =
                        c.unwrap(org.postgresql.PGConnection.class).getNotifications(5000);
                    return n == null ? "none" : n.length + " " + n[0].getName() + " " + n[0].getParameter();
                }
            });
        }
        System.out.println(String.join("\n", OUT));
    }
}
