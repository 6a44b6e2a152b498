//! Curve storage with bounded memory: when a series is full, neighbouring points are
//! merged pairwise and later points are averaged in groups of the same size, so a long
//! run keeps its whole shape in at most `cap` points.

/// Points kept per loss series before halving.
pub const DEFAULT_CAP: usize = 2000;

#[derive(Debug, Clone)]
pub struct Series {
    points: Vec<(f64, f64)>,
    cap: usize,
    /// Raw points per stored point.
    stride: usize,
    acc: (f64, f64, usize),
}

impl Default for Series {
    fn default() -> Self {
        Series::with_cap(DEFAULT_CAP)
    }
}

impl Series {
    pub fn with_cap(cap: usize) -> Series {
        Series {
            points: Vec::new(),
            cap: cap.max(4),
            stride: 1,
            acc: (0.0, 0.0, 0),
        }
    }

    pub fn push(&mut self, x: f64, y: f64) {
        if !x.is_finite() || !y.is_finite() {
            return;
        }
        self.acc.0 += x;
        self.acc.1 += y;
        self.acc.2 += 1;
        if self.acc.2 < self.stride {
            return;
        }
        let n = self.acc.2 as f64;
        self.points.push((self.acc.0 / n, self.acc.1 / n));
        self.acc = (0.0, 0.0, 0);
        if self.points.len() >= self.cap {
            self.halve();
        }
    }

    fn halve(&mut self) {
        let merged: Vec<(f64, f64)> = self
            .points
            .chunks(2)
            .map(|c| {
                let n = c.len() as f64;
                (
                    c.iter().map(|p| p.0).sum::<f64>() / n,
                    c.iter().map(|p| p.1).sum::<f64>() / n,
                )
            })
            .collect();
        self.points = merged;
        self.stride *= 2;
    }

    /// The stored points plus the partly filled group, so the newest value always shows.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let mut out = self.points.clone();
        if self.acc.2 > 0 {
            let n = self.acc.2 as f64;
            out.push((self.acc.0 / n, self.acc.1 / n));
        }
        out
    }

    /// Drops the newest points right of `x` (a resumed job redoes them). It stops at the
    /// first point that is not left of the one dropped after it: that point belongs to an
    /// earlier job, even when it lies further right (another seed).
    pub fn truncate_tail_after(&mut self, x: f64) {
        let mut prev = f64::INFINITY;
        if self.acc.2 > 0 {
            let ax = self.acc.0 / self.acc.2 as f64;
            if ax <= x {
                return;
            }
            prev = ax;
            self.acc = (0.0, 0.0, 0);
        }
        pop_tail_after(&mut self.points, x, prev, |p| p.0);
    }

    #[cfg(test)]
    pub fn stored(&self) -> &[(f64, f64)] {
        &self.points
    }

    pub fn last(&self) -> Option<(f64, f64)> {
        if self.acc.2 > 0 {
            let n = self.acc.2 as f64;
            return Some((self.acc.0 / n, self.acc.1 / n));
        }
        self.points.last().copied()
    }

    #[cfg(test)]
    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// Pops trailing items whose x is right of `x`, while x keeps decreasing from the end
/// (`prev`: the x of an item already dropped after them, else infinity).
pub fn pop_tail_after<T>(items: &mut Vec<T>, x: f64, mut prev: f64, x_of: impl Fn(&T) -> f64) {
    while let Some(last) = items.last() {
        let lx = x_of(last);
        if lx > x && lx < prev {
            prev = lx;
            items.pop();
        } else {
            break;
        }
    }
}

/// Exponential moving average with a per-step weight; `n` coalesced steps decay `n` times.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ema {
    value: Option<f64>,
}

impl Ema {
    pub const DECAY: f64 = 0.95;

    pub fn update(&mut self, x: f64, steps: u32) -> f64 {
        let v = match self.value {
            None => x,
            Some(v) => {
                let d = Self::DECAY.powi(steps.max(1) as i32);
                d * v + (1.0 - d) * x
            }
        };
        self.value = Some(v);
        v
    }

    pub fn reset(&mut self) {
        self.value = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stays_bounded_and_keeps_the_shape() {
        let mut s = Series::with_cap(100);
        for i in 0..100_000 {
            s.push(i as f64, i as f64 * 2.0);
        }
        assert!(s.stored().len() < 100, "{}", s.stored().len());
        assert!(s.stride() > 1);
        let pts = s.points();
        let first = pts.first().unwrap();
        let last = pts.last().unwrap();
        assert!(first.0 < 1000.0 && last.0 > 99_000.0, "{first:?} {last:?}");
        assert!(
            pts.windows(2).all(|w| w[0].0 < w[1].0),
            "x stays increasing"
        );
        assert!(
            pts.iter().all(|p| (p.1 - 2.0 * p.0).abs() < 1e-6),
            "averages of a line stay on it"
        );
    }

    #[test]
    fn ema_weights_coalesced_steps() {
        let mut e = Ema::default();
        assert_eq!(e.update(2.0, 1), 2.0);
        let one = e.update(1.0, 1);
        let mut f = Ema::default();
        f.update(2.0, 1);
        let many = f.update(1.0, 10);
        assert!(many < one, "more steps pull harder towards the new value");
    }
}
