//! Which strategy a task aggregates with, and its parameters: the one place
//! a strategy's settings, defaults and limits are written down. In a config
//! it is a tagged table, `[tasks.T.strategy]` with `name = "..."` and that
//! strategy's keys (see `config/default.toml`).

use serde::{Deserialize, Serialize};

use super::fedopt::{FedOpt, FedOptConfig, FedOptRule};
use super::{Bulyan, FedAvg, FedProx, Krum, Median, Strategy, TrimmedMean};

/// Every strategy's name, as a config writes it.
pub const NAMES: [&str; 10] = [
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Sample-weighted Federated Averaging (McMahan et al. 2017).
    /// (Empty braces: a unit variant of a tagged enum would accept any key.)
    Fedavg {},
    /// FedAvg with the proximal term mu/2 ||w - w_global||^2 at every hospital.
    Fedprox {
        #[serde(default = "default_mu")]
        mu: f64,
    },
    /// FedOpt with a server-side Adam / Yogi / Adagrad step (Reddi et al.
    /// 2021); defaults in `FedOptConfig::defaults`.
    Fedadam {
        #[serde(default = "lr_tenth")]
        server_lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "tau")]
        tau: f64,
    },
    Fedyogi {
        #[serde(default = "lr_hundredth")]
        server_lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "tau")]
        tau: f64,
    },
    /// Adagrad keeps no first-moment decay by default (m is the delta) and
    /// sums the squared deltas (no beta2).
    Fedadagrad {
        #[serde(default = "lr_tenth")]
        server_lr: f64,
        #[serde(default)]
        beta1: f64,
        #[serde(default = "tau")]
        tau: f64,
    },
    /// Coordinate-wise median.
    Median {},
    /// Coordinate-wise mean without the floor(beta n) largest and smallest values.
    TrimmedMean {
        #[serde(default = "default_beta")]
        beta: f64,
    },
    /// The update closest to its n - f - 2 nearest others.
    Krum {
        #[serde(default = "default_f")]
        f: usize,
    },
    /// The sample-weighted mean of the m updates Krum scores best.
    MultiKrum {
        #[serde(default = "default_f")]
        f: usize,
        /// Default: n - f, with n the task's hospitals.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        m: Option<usize>,
    },
    /// Krum selection of n - 2f updates, then per coordinate the mean of the
    /// n - 4f values closest to their median (El Mhamdi et al. 2018).
    Bulyan {
        #[serde(default = "default_f")]
        f: usize,
    },
}

fn default_mu() -> f64 {
    0.01
}
fn default_beta() -> f64 {
    0.2
}
fn default_f() -> usize {
    1
}
fn lr_tenth() -> f64 {
    FedOptConfig::defaults(FedOptRule::Adam).server_lr
}
fn lr_hundredth() -> f64 {
    FedOptConfig::defaults(FedOptRule::Yogi).server_lr
}
fn beta1() -> f64 {
    FedOptConfig::defaults(FedOptRule::Adam).beta1
}
fn beta2() -> f64 {
    FedOptConfig::defaults(FedOptRule::Adam).beta2
}
fn tau() -> f64 {
    FedOptConfig::defaults(FedOptRule::Adam).tau
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig::Fedavg {}
    }
}

/// A setting that does not fit: the key under the strategy's table and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub key: &'static str,
    pub message: String,
}

fn unfit(key: &'static str, message: String) -> Result<(), Unfit> {
    Err(Unfit { key, message })
}

impl StrategyConfig {
    /// `name` with its defaults; `None` for an unknown name.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "fedavg" => StrategyConfig::Fedavg {},
            "fedprox" => StrategyConfig::Fedprox { mu: default_mu() },
            "fedadam" => Self::fedopt(FedOptRule::Adam, FedOptConfig::defaults(FedOptRule::Adam)),
            "fedyogi" => Self::fedopt(FedOptRule::Yogi, FedOptConfig::defaults(FedOptRule::Yogi)),
            "fedadagrad" => Self::fedopt(FedOptRule::Adagrad, FedOptConfig::defaults(FedOptRule::Adagrad)),
            "median" => StrategyConfig::Median {},
            "trimmed_mean" => StrategyConfig::TrimmedMean { beta: default_beta() },
            "krum" => StrategyConfig::Krum { f: default_f() },
            "multi_krum" => StrategyConfig::MultiKrum {
                f: default_f(),
                m: None,
            },
            "bulyan" => StrategyConfig::Bulyan { f: default_f() },
            _ => return None,
        })
    }

    /// A FedOpt strategy's settings as a config.
    pub fn fedopt(rule: FedOptRule, c: FedOptConfig) -> Self {
        match rule {
            FedOptRule::Adam => StrategyConfig::Fedadam {
                server_lr: c.server_lr,
                beta1: c.beta1,
                beta2: c.beta2,
                tau: c.tau,
            },
            FedOptRule::Yogi => StrategyConfig::Fedyogi {
                server_lr: c.server_lr,
                beta1: c.beta1,
                beta2: c.beta2,
                tau: c.tau,
            },
            FedOptRule::Adagrad => StrategyConfig::Fedadagrad {
                server_lr: c.server_lr,
                beta1: c.beta1,
                tau: c.tau,
            },
        }
    }

    /// The rule and settings of a FedOpt strategy (`None` for the others).
    pub fn fedopt_settings(&self) -> Option<(FedOptRule, FedOptConfig)> {
        match *self {
            StrategyConfig::Fedadam {
                server_lr,
                beta1,
                beta2,
                tau,
            } => Some((
                FedOptRule::Adam,
                FedOptConfig {
                    server_lr,
                    beta1,
                    beta2,
                    tau,
                },
            )),
            StrategyConfig::Fedyogi {
                server_lr,
                beta1,
                beta2,
                tau,
            } => Some((
                FedOptRule::Yogi,
                FedOptConfig {
                    server_lr,
                    beta1,
                    beta2,
                    tau,
                },
            )),
            StrategyConfig::Fedadagrad {
                server_lr,
                beta1,
                tau,
            } => Some((
                FedOptRule::Adagrad,
                FedOptConfig {
                    server_lr,
                    beta1,
                    beta2: 0.0,
                    tau,
                },
            )),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::Fedavg {} => "fedavg",
            StrategyConfig::Fedprox { .. } => "fedprox",
            StrategyConfig::Fedadam { .. } => "fedadam",
            StrategyConfig::Fedyogi { .. } => "fedyogi",
            StrategyConfig::Fedadagrad { .. } => "fedadagrad",
            StrategyConfig::Median {} => "median",
            StrategyConfig::TrimmedMean { .. } => "trimmed_mean",
            StrategyConfig::Krum { .. } => "krum",
            StrategyConfig::MultiKrum { .. } => "multi_krum",
            StrategyConfig::Bulyan { .. } => "bulyan",
        }
    }

    /// Linear in the updates (a weighted sum): such a strategy could run over
    /// a secure sum; the robust ones need every update in the clear.
    pub fn is_linear(&self) -> bool {
        !matches!(
            self,
            StrategyConfig::Median {}
                | StrategyConfig::TrimmedMean { .. }
                | StrategyConfig::Krum { .. }
                | StrategyConfig::MultiKrum { .. }
                | StrategyConfig::Bulyan { .. }
        )
    }

    /// Fits a task of `hospitals` hospitals; the error names the key.
    pub fn validate(&self, hospitals: usize) -> Result<(), Unfit> {
        match self {
            StrategyConfig::Fedavg {} | StrategyConfig::Median {} => Ok(()),
            StrategyConfig::Fedprox { mu } => {
                if mu.is_finite() && *mu >= 0.0 {
                    Ok(())
                } else {
                    unfit("mu", format!("must be a non-negative number, got {mu}"))
                }
            }
            StrategyConfig::Fedadam { .. }
            | StrategyConfig::Fedyogi { .. }
            | StrategyConfig::Fedadagrad { .. } => {
                let (_, c) = self.fedopt_settings().expect("a FedOpt strategy");
                c.validate().map_err(|(key, message)| Unfit { key, message })
            }
            StrategyConfig::TrimmedMean { beta } => {
                if !(0.0..0.5).contains(beta) {
                    return unfit(
                        "beta",
                        format!("the share cut from each end must be in [0, 0.5), got {beta}"),
                    );
                }
                let cut = (beta * hospitals as f64).floor() as usize;
                if 2 * cut >= hospitals {
                    return unfit(
                        "beta",
                        format!("with {hospitals} hospitals, beta {beta} cuts {cut} from each end and leaves nothing"),
                    );
                }
                Ok(())
            }
            StrategyConfig::Krum { f } => {
                pairwise(hospitals)?;
                needs(hospitals, Krum::needs(*f), "2f + 3", *f)
            }
            StrategyConfig::MultiKrum { f, m } => {
                pairwise(hospitals)?;
                needs(hospitals, Krum::needs(*f), "2f + 3", *f)?;
                match m {
                    Some(m) if *m == 0 || *m > hospitals => {
                        unfit("m", format!("must be 1..={hospitals} (the hospitals), got {m}"))
                    }
                    _ => Ok(()),
                }
            }
            StrategyConfig::Bulyan { f } => {
                pairwise(hospitals)?;
                needs(hospitals, Bulyan::needs(*f), "4f + 3", *f)
            }
        }
    }

    /// The strategy, for a task of `hospitals` hospitals (Multi-Krum's
    /// default m is `hospitals - f`).
    pub fn build(&self, hospitals: usize) -> Box<dyn Strategy> {
        match *self {
            StrategyConfig::Fedavg {} => Box::new(FedAvg),
            StrategyConfig::Fedprox { mu } => Box::new(FedProx { mu }),
            StrategyConfig::Fedadam { .. }
            | StrategyConfig::Fedyogi { .. }
            | StrategyConfig::Fedadagrad { .. } => {
                let (rule, c) = self.fedopt_settings().expect("a FedOpt strategy");
                Box::new(FedOpt::new(rule, c))
            }
            StrategyConfig::Median {} => Box::new(Median),
            StrategyConfig::TrimmedMean { beta } => Box::new(TrimmedMean { beta }),
            StrategyConfig::Krum { f } => Box::new(Krum { f, m: None }),
            StrategyConfig::MultiKrum { f, m } => Box::new(Krum {
                f,
                m: Some(m.unwrap_or(hospitals.saturating_sub(f).max(1))),
            }),
            StrategyConfig::Bulyan { f } => Box::new(Bulyan { f }),
        }
    }
}

/// The most hospitals a strategy that compares every pair of updates takes:
/// its distance matrix is n^2 f64 (3.2 GB at 20,000) and Krum's scores sort
/// each row.
pub const MAX_PAIRWISE_HOSPITALS: usize = 20_000;

fn pairwise(hospitals: usize) -> Result<(), Unfit> {
    if hospitals <= MAX_PAIRWISE_HOSPITALS {
        return Ok(());
    }
    unfit(
        "name",
        format!(
            "compares every pair of updates (n^2 distances: {:.0} GB for {hospitals} hospitals); at most \
             {MAX_PAIRWISE_HOSPITALS} hospitals, or use median or trimmed_mean",
            (hospitals as f64).powi(2) * 8.0 / 1e9
        ),
    )
}

fn needs(hospitals: usize, needed: usize, rule: &str, f: usize) -> Result<(), Unfit> {
    if hospitals >= needed {
        return Ok(());
    }
    unfit(
        "f",
        format!("tolerating f = {f} needs n >= {rule} = {needed} hospitals; the task has {hospitals}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<StrategyConfig, String> {
        toml::from_str::<StrategyConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_name_parses_with_its_defaults_and_builds() {
        for name in NAMES {
            let config = parse(&format!("name = \"{name}\"")).unwrap();
            assert_eq!(config.name(), name);
            assert_eq!(Some(config.clone()), StrategyConfig::named(name));
            assert_eq!(config.build(7).name(), name);
            assert!(config.validate(7).is_ok(), "{name}");
        }
        assert!(StrategyConfig::named("fedsgd").is_none());
    }

    #[test]
    fn parameters_and_unknown_keys() {
        assert_eq!(
            parse("name = \"trimmed_mean\"\nbeta = 0.1").unwrap(),
            StrategyConfig::TrimmedMean { beta: 0.1 }
        );
        let yogi =
            parse("name = \"fedyogi\"\nserver_lr = 0.05\nbeta1 = 0.9\nbeta2 = 0.99\ntau = 0.001").unwrap();
        assert_eq!(
            yogi.fedopt_settings(),
            Some((
                FedOptRule::Yogi,
                FedOptConfig {
                    server_lr: 0.05,
                    ..FedOptConfig::defaults(FedOptRule::Yogi)
                }
            ))
        );
        // Adagrad sums squares: it has no beta2 to set.
        assert!(parse("name = \"fedadagrad\"\nbeta2 = 0.9")
            .unwrap_err()
            .contains("beta2"));
        let e = parse("name = \"krum\"\nbeta = 0.1").unwrap_err();
        assert!(e.contains("beta"), "{e}");
        let e = parse("name = \"fedsgd\"").unwrap_err();
        assert!(e.contains("fedsgd"), "{e}");
    }

    #[test]
    fn limits_name_their_key() {
        let key = |c: StrategyConfig, n: usize| c.validate(n).unwrap_err();
        let e = key(StrategyConfig::Krum { f: 1 }, 4);
        assert_eq!(e.key, "f");
        assert!(
            e.message.contains("n >= 2f + 3 = 5 hospitals; the task has 4"),
            "{}",
            e.message
        );
        assert!(StrategyConfig::Krum { f: 1 }.validate(5).is_ok());
        assert_eq!(key(StrategyConfig::Bulyan { f: 1 }, 6).key, "f");
        assert!(StrategyConfig::Bulyan { f: 1 }.validate(7).is_ok());
        assert_eq!(key(StrategyConfig::MultiKrum { f: 1, m: Some(6) }, 5).key, "m");
        assert_eq!(key(StrategyConfig::TrimmedMean { beta: 0.5 }, 5).key, "beta");
        assert_eq!(key(StrategyConfig::Fedprox { mu: -1.0 }, 5).key, "mu");
        let mut adam = FedOptConfig::defaults(FedOptRule::Adam);
        adam.tau = 0.0;
        assert_eq!(key(StrategyConfig::fedopt(FedOptRule::Adam, adam), 5).key, "tau");
        // Multi-Krum needs 2f + 3, and keeps n - f by default.
        let built = StrategyConfig::MultiKrum { f: 1, m: None }.build(5);
        assert_eq!(built.min_updates(), 5);
        let built = StrategyConfig::MultiKrum { f: 1, m: None }.build(100);
        assert_eq!(
            built.min_updates(),
            5,
            "not n - f: one missing update must not abort"
        );
        let e = key(StrategyConfig::Krum { f: 1 }, 20_001);
        assert!(e.key == "name" && e.message.contains("GB"), "{}", e.message);
        assert_eq!(key(StrategyConfig::Krum { f: usize::MAX }, 5).key, "f");
        assert!(StrategyConfig::Median {}.build(5).min_updates() == 1);
        assert!(!StrategyConfig::Median {}.is_linear() && StrategyConfig::Fedprox { mu: 0.1 }.is_linear());
    }
}
