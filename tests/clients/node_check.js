// node-postgres checks for tests/integration/apps.rs: the same transcript must come out
// straight from PostgreSQL and through tokengate. Usage: node node_check.js PORT
// (pg is found through NODE_PATH). TG_TLS=1: TLS to the server, with channel binding.
'use strict';
const { Client } = require('pg');
const port = Number(process.argv[2]);
const tls = process.env.TG_TLS === '1';
const out = [];
async function run(label, f) {
  try {
    out.push(`${label}: ${JSON.stringify(await f())}`);
  } catch (e) {
    out.push(`${label}: ERROR ${e.code} ${e.message} | ${e.detail} | ${e.hint}`);
  }
}
(async () => {
  const c = new Client({
    host: '127.0.0.1', port, user: 'support', password: 'support-demo-pw', database: 'crm',
    ssl: tls ? { rejectUnauthorized: false } : false,
    enableChannelBinding: tls,
  });
  await c.connect();
  const q = async (text, values) => (await c.query(text, values)).rows;
  await run('simple', () => q('SELECT id, city FROM customers ORDER BY id LIMIT 3'));
  await run('param', () => q('SELECT city FROM customers WHERE id = $1', [2]));
  await run('named', async () => {
    const r = [];
    for (const i of [1, 2, 3]) {
      r.push((await c.query({ name: 'by_id', text: 'SELECT id, city FROM customers WHERE id = $1', values: [i] })).rows);
    }
    return r;
  });
  await run('rowmode', async () => (await c.query({
    text: 'SELECT id, city FROM customers WHERE id < $1 ORDER BY id', values: [4], rowMode: 'array',
  })).rows);
  await run('fields', async () => (await c.query('SELECT id, city FROM customers LIMIT 1')).fields
    .map((f) => [f.name, f.dataTypeID, f.tableID !== 0, f.columnID]));
  await run('types', () => q(`SELECT 1::int2 AS a, 2::int8 AS b, 1.5::numeric AS c, 'x'::text AS d,
    '2024-01-02'::date::text AS e, '{1,2}'::int[] AS f, '{"k": 1}'::jsonb AS g, '\\x0102'::bytea AS h,
    true AS i, NULL::text AS j, '2024-01-02 03:04:05+00'::timestamptz AT TIME ZONE 'UTC' AS k`));
  await run('tx', async () => {
    await c.query('BEGIN');
    await c.query('CREATE TEMP TABLE nt (id int PRIMARY KEY, v text)');
    await c.query('INSERT INTO nt VALUES ($1, $2), ($3, $4)', [1, 'a', 2, 'b']);
    await c.query('SAVEPOINT s');
    let dup = 'none';
    try { await c.query('INSERT INTO nt VALUES (1, $1)', ['dup']); } catch (e) { dup = e.code; }
    await c.query('ROLLBACK TO SAVEPOINT s');
    await c.query('COMMIT');
    return [dup, await q('SELECT id, v FROM nt ORDER BY id')];
  });
  await run('unique', async () => (await c.query("INSERT INTO nt VALUES (1, 'x')")).rowCount);
  await run('returning', () => q("INSERT INTO nt VALUES (3, 'c') RETURNING id, v"));
  await run('typo', () => q('SELECT nme FROM nt'));
  await run('multi', async () => (await c.query('SELECT 1 AS a; SELECT 2 AS b')).map((r) => r.rows));
  await run('notify', async () => {
    await c.query('LISTEN chan');
    const got = new Promise((res) => c.once('notification', (m) => res([m.channel, m.payload])));
    await c.query("NOTIFY chan, 'hello'");
    return await got;
  });
  await run('pid', async () => (await q('SELECT pg_backend_pid() AS pid'))[0].pid === c.processID);
  await run('info', () => q(`SELECT table_name FROM information_schema.tables
    WHERE table_schema = 'public' ORDER BY 1`));
  await run('setting', () => q("SELECT set_config('application_name', 'node', false) AS v"));
  await c.end();
  console.log(out.join('\n'));
})().catch((e) => {
  console.log(`FATAL ${e.code} ${e.message}`);
  process.exit(1);
});
