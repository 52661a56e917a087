//! Deterministic, realistic-looking fake CRM data: customers (names, emails, phones, SSNs,
//! birth dates), payments (Luhn-valid card numbers) and visits (health notes). Pure: returns SQL.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Donald",
    "Shafi",
    "Leslie",
    "Hedy",
    "Tim",
    "Joan",
    "Niklaus",
    "Sophie",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Knuth",
    "Goldwasser",
    "Lamport",
    "Lamarr",
    "Berners",
    "Clarke",
    "Wirth",
    "Wilson",
];
const CITIES: &[&str] = &[
    "Springfield",
    "Riverton",
    "Lakeside",
    "Fairview",
    "Georgetown",
    "Salem",
    "Madison",
    "Clinton",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "corp.example.net"];
const DIAGNOSES: &[&str] = &[
    "Hypertension",
    "Type 2 diabetes",
    "Asthma",
    "Migraine",
    "Seasonal allergies",
    "Back pain",
];
const NOTES: &[&str] = &[
    "Patient reports improvement; continue current medication.",
    "Follow-up in six weeks; blood pressure slightly elevated.",
    "Referred to specialist for further tests.",
    "Discussed diet and exercise plan.",
    "Prescription renewed for 90 days.",
];

pub const SCHEMA: &str = "
CREATE TABLE customers (
    id serial PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL,
    phone text NOT NULL,
    ssn text NOT NULL,
    birth_date date NOT NULL,
    city text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payments (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    card_number text NOT NULL,
    amount numeric(10,2) NOT NULL,
    paid_at timestamptz NOT NULL
);
CREATE TABLE visits (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    visit_date date NOT NULL,
    diagnosis text NOT NULL,
    notes text NOT NULL
);
";

/// Appends a Luhn check digit to `digits`.
pub fn with_luhn_check_digit(digits: &str) -> String {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

pub fn luhn_valid(number: &str) -> bool {
    number.len() > 1 && with_luhn_check_digit(&number[..number.len() - 1]) == number
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

/// INSERT statements for `customers` customers, two payments each and a visit for every
/// second customer.
pub fn inserts(customers: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sql = String::with_capacity(customers * 400);
    sql.push_str("INSERT INTO customers (full_name, email, phone, ssn, birth_date, city, created_at) VALUES\n");
    for i in 1..=customers {
        let (first, last) = (pick(&mut rng, FIRST), pick(&mut rng, LAST));
        let email = format!(
            "{}.{}{}@{}",
            first.to_lowercase(),
            last.to_lowercase(),
            i,
            pick(&mut rng, DOMAINS)
        );
        let phone = format!(
            "+1 ({}) {:03}-{:04}",
            rng.random_range(201..990),
            rng.random_range(200..999),
            rng.random_range(0..10_000)
        );
        let ssn = format!(
            "{:03}-{:02}-{:04}",
            rng.random_range(100..900),
            rng.random_range(10..100),
            rng.random_range(1000..10_000)
        );
        let birth = format!(
            "{}-{:02}-{:02}",
            rng.random_range(1940..2005),
            rng.random_range(1..13),
            rng.random_range(1..29)
        );
        let sep = if i == customers { ";\n" } else { ",\n" };
        sql.push_str(&format!(
            "('{first} {last}', '{email}', '{phone}', '{ssn}', '{birth}', '{}', now() - interval '{} days'){sep}",
            pick(&mut rng, CITIES),
            rng.random_range(0..1000)
        ));
    }
    sql.push_str("INSERT INTO payments (customer_id, card_number, amount, paid_at) VALUES\n");
    for i in 1..=customers * 2 {
        let prefix = if rng.random_bool(0.5) { "4" } else { "5" };
        let body: String = (0..14)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        let card = with_luhn_check_digit(&format!("{prefix}{body}"));
        let sep = if i == customers * 2 { ";\n" } else { ",\n" };
        sql.push_str(&format!(
            "({}, '{card}', {}.{:02}, now() - interval '{} hours'){sep}",
            (i - 1) / 2 + 1,
            rng.random_range(5..2000),
            rng.random_range(0..100),
            rng.random_range(0..5000)
        ));
    }
    sql.push_str("INSERT INTO visits (customer_id, visit_date, diagnosis, notes) VALUES\n");
    let visits = customers.div_ceil(2);
    for i in 1..=visits {
        let sep = if i == visits { ";\n" } else { ",\n" };
        sql.push_str(&format!(
            "({}, current_date - {}, '{}', '{}'){sep}",
            i * 2 - 1,
            rng.random_range(0..700),
            pick(&mut rng, DIAGNOSES),
            pick(&mut rng, NOTES)
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_check_digits_are_valid() {
        assert_eq!(with_luhn_check_digit("7992739871"), "79927398713");
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
    }

    #[test]
    fn inserts_are_deterministic_and_complete() {
        let a = inserts(10, 7);
        assert_eq!(a, inserts(10, 7));
        assert_ne!(a, inserts(10, 8));
        assert_eq!(a.matches("@").count(), 10);
        let cards: Vec<&str> = a
            .split('\'')
            .filter(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(cards.len(), 20);
        assert!(cards.iter().all(|c| luhn_valid(c)));
    }
}
