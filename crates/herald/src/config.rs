//! Loads the configuration: embedded defaults, then a TOML file, then `HERALD_*` environment
//! variables (`HERALD_SECTION__KEY`), validated once into the typed tree of `herald-server`.

use anyhow::Context;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use herald_server::Config;
use std::path::Path;

pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Toml::string(herald_server::config::DEFAULT_TOML));
    match file {
        Some(f) => {
            anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
            fig = fig.merge(Toml::file(f));
        }
        None => {
            if Path::new("herald.toml").exists() {
                fig = fig.merge(Toml::file("herald.toml"));
            }
        }
    }
    // Only HERALD_SECTION__KEY variables configure the server; HERALD_URL and friends belong
    // to the CLI.
    fig = fig.merge(
        Env::prefixed("HERALD_")
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    let config: Config = fig.extract().context("invalid configuration")?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's Jail API returns its own (large) error type; nothing to shrink here.
    #[allow(clippy::result_large_err)]
    #[test]
    fn file_and_env_overlay_defaults_and_unknown_keys_fail() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                "[store]\nfulltext = false\n[server]\nlisten = \"127.0.0.1:1\"\n",
            )?;
            jail.set_env("HERALD_SERVER__LISTEN", "127.0.0.1:2");
            jail.set_env("HERALD_URL", "http://ignored");
            let c = load(Some(Path::new("h.toml"))).map_err(|e| e.to_string())?;
            assert!(!c.store.fulltext);
            assert_eq!(c.server.listen, "127.0.0.1:2");
            assert_eq!(c.limits.max_batch_len, 10_000);
            jail.create_file("bad.toml", "[store]\nfulltxt = false\n")?;
            let err = load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(format!("{err:#}").contains("fulltxt"), "{err:#}");
            Ok(())
        });
    }
}
