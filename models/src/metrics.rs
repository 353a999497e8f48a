//! Binary classification metrics of a model's positive-class probabilities.

use serde::{Deserialize, Serialize};

/// Counts of the 2x2 confusion matrix at threshold 0.5.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub count: u64,
    pub accuracy: f64,
    /// 0 when nothing is predicted positive (as scikit-learn's zero_division=0).
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// ROC-AUC; `None` when the labels hold a single class (it is undefined).
    pub auc: Option<f64>,
    /// Mean binary cross-entropy, probabilities clipped to [1e-15, 1 - 1e-15].
    pub loss: f64,
    pub confusion: Confusion,
}

const PROB_CLIP: f64 = 1e-15;

/// Metrics of `probs` (probability of the positive class) against `labels`.
pub fn binary_metrics(probs: &[f64], labels: &[bool]) -> Metrics {
    assert_eq!(probs.len(), labels.len(), "one probability per label");
    let mut c = Confusion::default();
    let mut loss = 0.0;
    for (&p, &y) in probs.iter().zip(labels) {
        match (p >= 0.5, y) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, false) => c.tn += 1,
            (false, true) => c.fn_ += 1,
        }
        let p = p.clamp(PROB_CLIP, 1.0 - PROB_CLIP);
        loss -= if y { p.ln() } else { (1.0 - p).ln() };
    }
    let n = probs.len() as u64;
    from_counts(
        c,
        if n == 0 { 0.0 } else { loss / n as f64 },
        roc_auc(probs, labels),
    )
}

/// Ratios of a confusion matrix, with the mean loss and AUC given.
fn from_counts(c: Confusion, loss: f64, auc: Option<f64>) -> Metrics {
    let n = c.tp + c.fp + c.tn + c.fn_;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(c.tp, c.tp + c.fp);
    let recall = ratio(c.tp, c.tp + c.fn_);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Metrics {
        count: n,
        accuracy: ratio(c.tp + c.tn, n),
        precision,
        recall,
        f1,
        auc,
        loss,
        confusion: c,
    }
}

/// The metrics of the union of the parts' examples, from their confusion
/// matrices and mean losses (federated evaluation). AUC needs the scores
/// themselves, so the pooled AUC is `None`. `None` for no parts.
pub fn pooled(parts: &[&Metrics]) -> Option<Metrics> {
    if parts.is_empty() {
        return None;
    }
    let mut c = Confusion::default();
    let mut loss_sum = 0.0;
    for m in parts {
        c.tp += m.confusion.tp;
        c.fp += m.confusion.fp;
        c.tn += m.confusion.tn;
        c.fn_ += m.confusion.fn_;
        loss_sum += m.loss * m.count as f64;
    }
    let n = c.tp + c.fp + c.tn + c.fn_;
    Some(from_counts(
        c,
        if n == 0 { 0.0 } else { loss_sum / n as f64 },
        None,
    ))
}

/// ROC-AUC as the Mann-Whitney statistic, ties sharing their average rank.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks are 1-based; the tie group i..=j shares the mean of its ranks.
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn auc_matches_scikit_learn_documentation_example() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        close(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap(),
            0.75,
        );
        // All scores tied: chance level.
        close(roc_auc(&[0.5; 4], &[false, true, false, true]).unwrap(), 0.5);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn counts_and_ratios_by_hand() {
        // tp: 0.9, 0.6; fn: 0.4; fp: 0.7; tn: 0.1, 0.2
        let probs = [0.9, 0.6, 0.4, 0.7, 0.1, 0.2];
        let labels = [true, true, true, false, false, false];
        let m = binary_metrics(&probs, &labels);
        assert_eq!(
            m.confusion,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 2,
                fn_: 1
            }
        );
        close(m.accuracy, 4.0 / 6.0);
        close(m.precision, 2.0 / 3.0);
        close(m.recall, 2.0 / 3.0);
        close(m.f1, 2.0 / 3.0);
        // positives rank 6, 4, 3 among 6 scores -> (13 - 6) / 9
        close(m.auc.unwrap(), 7.0 / 9.0);
        let expected_loss =
            -((0.9f64).ln() + 0.6f64.ln() + 0.4f64.ln() + 0.3f64.ln() + 0.9f64.ln() + 0.8f64.ln()) / 6.0;
        close(m.loss, expected_loss);
    }

    #[test]
    fn log_loss_known_value_and_clipping() {
        // sklearn.metrics.log_loss([1, 0], [0.9, 0.2]) == 0.16425203348...
        let m = binary_metrics(&[0.9, 0.2], &[true, false]);
        assert!((m.loss - 0.164_252_033_486_018_2).abs() < 1e-12);
        let m = binary_metrics(&[0.0], &[true]);
        assert!(m.loss.is_finite() && (m.loss - 34.538_776_394_910_684).abs() < 1e-6);
    }

    #[test]
    fn pooled_parts_equal_the_metrics_of_their_union() {
        let (probs, labels) = (
            [0.9, 0.2, 0.7, 0.4, 0.6, 0.1, 0.8],
            [true, false, false, true, true, false, true],
        );
        let whole = binary_metrics(&probs, &labels);
        let a = binary_metrics(&probs[..3], &labels[..3]);
        let b = binary_metrics(&probs[3..], &labels[3..]);
        let p = pooled(&[&a, &b]).unwrap();
        assert_eq!(p.confusion, whole.confusion);
        assert_eq!(p.count, 7);
        close(p.accuracy, whole.accuracy);
        close(p.precision, whole.precision);
        close(p.recall, whole.recall);
        close(p.f1, whole.f1);
        close(p.loss, whole.loss);
        assert_eq!(p.auc, None);
        assert!(pooled(&[]).is_none());
    }

    #[test]
    fn no_predicted_positive_gives_zero_precision() {
        let m = binary_metrics(&[0.1, 0.2], &[true, false]);
        assert_eq!(m.precision, 0.0);
        assert_eq!(m.f1, 0.0);
    }
}
