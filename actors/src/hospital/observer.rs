//! What a hospital's own metrics see of its agent: each local training and
//! the privacy it has spent. The app implements it (`medfed hospital
//! --http`); the simulation passes none.
//! Nothing here carries patient data or a metric that DP withholds.

use medfed_models::learner::PrivacySpent;

pub trait HospitalObserver: Send + Sync {
    /// A local training ended after `seconds`: an update was sent
    /// (`sent`), or it failed or was declined.
    fn trained(&self, seconds: f64, sent: bool);
    /// The privacy spent on this hospital's data after a release (also
    /// once at start), and how many times its ledger file was written.
    fn privacy(&self, spent: &PrivacySpent, ledger_writes: u64);
}
