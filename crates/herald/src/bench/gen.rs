//! A deterministic generator of realistic events (~800 bytes of JSON), shaped like
//! `../shared/bench/gen_events.py`: 50 types with Zipf popularity, 2,000 organizations
//! (Zipf), 100,000 users each fixed to an organization and mostly to a country, 500,000
//! products, a nested `data` payload of 300–800 bytes.

use std::fmt::Write;

pub const TYPES: [(&str, &str); 50] = [
    ("page.viewed", "activity"),
    ("product.viewed", "activity"),
    ("search.performed", "activity"),
    ("product.edited", "audit"),
    ("api.request", "system"),
    ("session.started", "activity"),
    ("cart.item_added", "commerce"),
    ("session.ended", "activity"),
    ("product.created", "audit"),
    ("notification.sent", "system"),
    ("email.sent", "system"),
    ("import.started", "integration"),
    ("import.completed", "integration"),
    ("user.login", "security"),
    ("order.created", "commerce"),
    ("webhook.delivered", "integration"),
    ("export.completed", "integration"),
    ("product.published", "audit"),
    ("job.completed", "system"),
    ("api.error", "error"),
    ("cart.item_removed", "commerce"),
    ("payment.succeeded", "billing"),
    ("user.updated", "audit"),
    ("comment.added", "activity"),
    ("file.uploaded", "activity"),
    ("import.failed", "error"),
    ("product.deleted", "audit"),
    ("job.failed", "error"),
    ("order.shipped", "commerce"),
    ("user.logout", "security"),
    ("webhook.failed", "error"),
    ("export.started", "integration"),
    ("user.registered", "audit"),
    ("category.updated", "audit"),
    ("price.changed", "commerce"),
    ("stock.low", "system"),
    ("payment.failed", "error"),
    ("user.password_reset", "security"),
    ("team.member_added", "audit"),
    ("report.generated", "system"),
    ("sync.conflict", "error"),
    ("invoice.issued", "billing"),
    ("subscription.renewed", "billing"),
    ("user.login_failed", "security"),
    ("apikey.created", "security"),
    ("integration.connected", "integration"),
    ("order.refunded", "commerce"),
    ("subscription.cancelled", "billing"),
    ("user.deleted", "audit"),
    ("db.timeout", "error"),
];
const SOURCES: [&str; 8] = [
    "/web",
    "/api",
    "/mobile-ios",
    "/mobile-android",
    "/worker",
    "/scheduler",
    "/webhook",
    "/importer",
];
pub const COUNTRIES: [&str; 30] = [
    "us", "fr", "de", "gb", "es", "it", "be", "nl", "ca", "br", "in", "jp", "pl", "se", "ch", "at",
    "pt", "mx", "au", "ie", "dk", "no", "fi", "cz", "ro", "gr", "hu", "ar", "za", "nz",
];
const WORDS: [&str; 24] = [
    "alpha", "bravo", "cargo", "delta", "ember", "fjord", "gamma", "harbor", "ion", "jade", "kelp",
    "lumen", "mango", "nectar", "orbit", "pixel", "quartz", "raven", "sable", "tundra", "umber",
    "vortex", "willow", "zephyr",
];

/// SplitMix64: tiny, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Cumulative Zipf weights for ranks 1..=n.
fn zipf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut v: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect();
    let total = acc;
    v.iter_mut().for_each(|x| *x /= total);
    v
}

fn pick(cum: &[f64], r: f64) -> usize {
    cum.partition_point(|&c| c < r).min(cum.len() - 1)
}

pub struct Generator {
    rng: Rng,
    types: Vec<f64>,
    orgs: Vec<f64>,
    users: Vec<f64>,
    products: Vec<f64>,
    /// Event times run from `start_us` to `end_us` in generation order.
    pub start_us: i64,
    pub end_us: i64,
    pub total: usize,
    n: usize,
    run: u64,
}

/// One generated event and the columns the SQL baseline stores separately.
pub struct GenEvent {
    pub json: String,
    pub id: String,
    pub time_us: i64,
    pub ty: &'static str,
    pub user: String,
    /// The JSONB `data` column of the baseline: the event minus id, time, type and user.
    pub baseline_data: String,
}

impl Generator {
    pub fn new(seed: u64, total: usize, start_us: i64, end_us: i64) -> Generator {
        Generator {
            rng: Rng::new(seed),
            types: zipf(TYPES.len(), 1.1),
            orgs: zipf(2000, 0.9),
            users: zipf(100_000, 1.0),
            products: zipf(500_000, 0.8),
            start_us,
            end_us,
            total: total.max(1),
            n: 0,
            run: seed,
        }
    }

    pub fn next_event(&mut self) -> GenEvent {
        let r = &mut self.rng;
        let (ty, category) = TYPES[pick(&self.types, r.unit())];
        let user = pick(&self.users, r.unit());
        // A user belongs to one organization and, mostly, one country.
        let mut ur = Rng::new(user as u64 * 7919 + 17);
        let org = pick(&self.orgs, ur.unit()) + 1;
        let country = if r.unit() < 0.9 {
            COUNTRIES[ur.below(COUNTRIES.len())]
        } else {
            COUNTRIES[r.below(COUNTRIES.len())]
        };
        let product = pick(&self.products, r.unit());
        let span = (self.end_us - self.start_us).max(1);
        let time_us = self.start_us + (span as f64 * self.n as f64 / self.total as f64) as i64
            - r.below(3_000_000) as i64;
        self.n += 1;
        let severity = if category == "error" {
            if r.unit() < 0.2 {
                "critical"
            } else {
                "error"
            }
        } else if r.unit() < 0.1 {
            "warning"
        } else if r.unit() < 0.1 {
            "debug"
        } else {
            "info"
        };
        let source = SOURCES[r.below(SOURCES.len())];
        let id = format!("{:016x}{:016x}", self.run, r.next());
        let time = herald_core::timespec::format_rfc3339(time_us);
        let mut data = String::with_capacity(800);
        let _ = write!(
            data,
            r#"{{"category":"{category}","country":"{country}","org":"org-{org:04}","product":"p-{product:06}","request":{{"id":"req-{:012x}","session":"s-{:010x}","ip":"10.{}.{}.{}","ua":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"}},"metrics":{{"duration_ms":{},"bytes":{},"items":{}}},"tags":["{}","{}"],"note":""#,
            r.next() & 0xffff_ffff_ffff,
            r.next() & 0xff_ffff_ffff,
            r.below(256),
            r.below(256),
            r.below(256),
            r.below(5000),
            r.below(1_000_000),
            r.below(50),
            WORDS[r.below(WORDS.len())],
            WORDS[r.below(WORDS.len())],
        );
        let target = 300 + r.below(500);
        while data.len() < target {
            data.push_str(WORDS[r.below(WORDS.len())]);
            data.push(' ');
        }
        data.push_str("\"}");
        let mut json = format!(
            r#"{{"id":"{id}","source":"{source}","type":"{ty}","time":"{time}","subject":"p-{product:06}","actor":"user:{user}","tenant":"org-{org:04}","severity":"{severity}","data":{data}}}"#
        );
        let mut baseline_data = format!(
            r#"{{"category":"{category}","severity":"{severity}","source":"{source}","org_id":"org-{org:04}","country":"{country}","product":"p-{product:06}","data":{data}}}"#
        );
        // Millions are held at once: no spare capacity (`format!` may leave up to half).
        json.shrink_to_fit();
        baseline_data.shrink_to_fit();
        GenEvent {
            json,
            id,
            time_us,
            ty,
            user: format!("user:{user}"),
            baseline_data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_realistic_and_deterministic() {
        let mut a = Generator::new(42, 1000, 0, 1_000_000_000);
        let mut b = Generator::new(42, 1000, 0, 1_000_000_000);
        let evs: Vec<GenEvent> = (0..1000).map(|_| a.next_event()).collect();
        assert_eq!(
            evs[999].json,
            (0..1000).map(|_| b.next_event()).last().unwrap().json
        );
        let avg = evs.iter().map(|e| e.json.len()).sum::<usize>() / evs.len();
        assert!((650..=1000).contains(&avg), "average size {avg}");
        for e in &evs {
            let v: serde_json::Value = serde_json::from_str(&e.json).expect("valid JSON");
            assert!(v["data"]["org"].as_str().unwrap().starts_with("org-"));
            let _: serde_json::Value = serde_json::from_str(&e.baseline_data).expect("valid JSON");
        }
        let page_views = evs.iter().filter(|e| e.ty == "page.viewed").count();
        assert!(
            page_views > 150,
            "Zipf: the top type is frequent ({page_views})"
        );
    }
}
