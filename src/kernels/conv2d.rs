//! 2-D convolution on f32 NCHW slices, one sample per task, for the forward pass and both
//! gradients:
//! - stride-1 convolutions with enough input channels on the padded-width grid (`Stride1`):
//!   forward and input gradient (the flipped-kernel convolution) with the direct kernel of
//!   [`super::direct`] where the CPU has AVX-512 and the output channels fill its panels,
//!   else `kh` row copies and `kw` GEMMs;
//! - strided convolutions with many taps and whole blocks of output channels, and stride-1
//!   ones with 8-wide output rows: forward (and the latter's input gradient) with the
//!   channels-in-vector kernel of [`super::chanvec`] on padded planes (`ChanTiles`);
//! - other convolutions with more than a 1x1 kernel and whole panels (strided ones, RGB input
//!   layers): forward with the direct kernel on phase planes (`Phased`);
//! - the weight gradient, any stride, with the kernel of [`super::wgrad`] where the CPU has
//!   AVX-512 and the output channels fill its vectors (`WeightGrad`), else GEMMs on the row
//!   copies (stride 1) or on im2col;
//! - the input gradient of strided ones with whole panels of input channels as one
//!   stride-1 sub-convolution per stride phase on the direct kernel (`PhasedDx`);
//! - the rest as im2col + one GEMM (or its adjoint).
//!
//! Why this exists: Burn 0.21's flex backend computes the weight gradient as a convolution
//! of the transposed input with the transposed output gradient. The transposes go through
//! flex's one-element-at-a-time strided copy and the "convolution" has a kernel as large as
//! the feature map, so the weight gradient alone was about a third of a CNN training step
//! (see BENCHMARKS.md). Here every pass is a plain GEMM on matrices that fit in cache.
//!
//! Determinism: each sample is processed by one task with a single-threaded GEMM or kernel,
//! and the weight gradient is summed over fixed chunks of [`CHUNK`] samples, then over the chunks
//! in order, so results do not depend on the number of threads or on scheduling.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::batch_norm::Epilogue;
use super::buffer;
use super::chanvec;
use super::direct;
use super::simd::{copy_short, deinterleave, interleave, interleave_add, scatter_even, vectorized};
use super::wgrad;
pub use super::OutputMap;

/// Samples per weight-gradient partial sum (fixed so that the summation order, and with it
/// every bit of the result, is the same whatever the thread count).
pub const CHUNK: usize = 4;

/// Shape of a convolution: groups 1, dilation 1, symmetric zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
}

impl<'a> OutputMap<'a> {
    /// Just a bias (or nothing).
    pub fn bias(bias: Option<&'a [f32]>) -> Self {
        OutputMap {
            shift: bias,
            ..Default::default()
        }
    }

    /// Panics, naming `kernel`, unless the scale and shift have `c_out` values and the
    /// residual `out_len` (the output's length): the kernels that apply the map read them
    /// unchecked.
    pub(crate) fn check(&self, kernel: &str, c_out: usize, out_len: usize) {
        for (what, v) in [("scale", self.scale), ("shift", self.shift)] {
            assert!(
                v.is_none_or(|v| v.len() == c_out),
                "{kernel}: {what} length"
            );
        }
        assert!(
            self.epilogue.residual.is_none_or(|r| r.len() == out_len),
            "{kernel}: residual length"
        );
    }

    /// Whether it leaves every value as it is.
    fn is_identity(&self) -> bool {
        self.scale.is_none()
            && self.shift.is_none()
            && self.epilogue.residual.is_none()
            && !self.epilogue.relu
    }

    /// The map for sample `n`, whose output is `len` values: its part of the residual.
    fn sample(&self, n: usize, len: usize) -> Self {
        let residual = self.epilogue.residual.map(|r| &r[n * len..][..len]);
        OutputMap {
            epilogue: Epilogue {
                residual,
                ..self.epilogue
            },
            ..*self
        }
    }

    /// Channel `c`'s scale and shift.
    fn channel(&self, c: usize) -> (f32, f32) {
        (
            self.scale.map_or(1.0, |s| s[c]),
            self.shift.map_or(0.0, |s| s[c]),
        )
    }
}

impl Conv2dShape {
    /// Output height and width, or `None` when the kernel does not fit the padded input
    /// or a stride is zero.
    pub fn out_hw(&self) -> Option<[usize; 2]> {
        let [sh, sw] = self.stride;
        let [ph, pw] = self.pad;
        if sh == 0 || sw == 0 || self.kh == 0 || self.kw == 0 {
            return None;
        }
        let hp = self.h + 2 * ph;
        let wp = self.w + 2 * pw;
        if hp < self.kh || wp < self.kw {
            return None;
        }
        Some([(hp - self.kh) / sh + 1, (wp - self.kw) / sw + 1])
    }

    fn dims(&self) -> Dims {
        let [ho, wo] = self
            .out_hw()
            .expect("conv2d: kernel larger than padded input");
        Dims {
            s: *self,
            wo,
            k: self.c_in * self.kh * self.kw,
            l: ho * wo,
            x_len: self.c_in * self.h * self.w,
        }
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.h * self.w
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }

    pub fn output_len(&self) -> usize {
        let [ho, wo] = self.out_hw().unwrap_or([0, 0]);
        self.batch * self.c_out * ho * wo
    }
}

/// Derived sizes: `k` rows of im2col (c_in * kh * kw), `l` output positions per sample.
#[derive(Clone, Copy)]
struct Dims {
    s: Conv2dShape,
    wo: usize,
    k: usize,
    l: usize,
    x_len: usize,
}

impl Dims {
    /// 1x1, stride 1, no padding: the input plane already is the im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.s.kh == 1 && self.s.kw == 1 && self.s.stride == [1, 1] && self.s.pad == [0, 0]
    }

    /// Output columns `ow` whose input column `ow * sw + j - pw` lies inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (sw, pw, w) = (self.s.stride[1], self.s.pad[1], self.s.w);
        let lo = if pw > j { (pw - j).div_ceil(sw) } else { 0 };
        let hi = if w + pw > j {
            ((w + pw - j - 1) / sw + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Input row of output row `oh` for kernel row `i`, if inside the image.
    fn in_row(&self, oh: usize, i: usize) -> Option<usize> {
        let ih = (oh * self.s.stride[0] + i).checked_sub(self.s.pad[0])?;
        (ih < self.s.h).then_some(ih)
    }
}

/// Where the valid run of one im2col row comes from: the output columns `lo..hi` whose input
/// column is inside the image, and the run's first index within an input row (of `x` for
/// stride 1, of the row's column phases for larger strides; see [`split_phases`]).
#[derive(Clone, Copy)]
struct Run {
    ci: usize,
    i: usize,
    lo: usize,
    hi: usize,
    offset: usize,
}

/// One image-backed run of an im2col row: `cols[at..at + len]` is `src[base..base + len]`.
#[derive(Clone, Copy)]
struct Segment {
    at: usize,
    base: usize,
    len: usize,
}

impl Dims {
    fn run(&self, row: usize) -> Run {
        let Conv2dShape { kh, kw, .. } = self.s;
        let (sw, pw) = (self.s.stride[1], self.s.pad[1]);
        let (ci, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
        let (lo, hi) = self.valid_cols(j);
        let c0 = (lo * sw + j).saturating_sub(pw);
        let offset = if sw == 1 {
            c0
        } else {
            (c0 % sw) * self.s.w.div_ceil(sw) + c0 / sw
        };
        Run {
            ci,
            i,
            lo,
            hi,
            offset,
        }
    }

    /// [`Dims::run`] for every im2col row.
    fn runs(&self) -> Vec<Run> {
        (0..self.k).map(|row| self.run(row)).collect()
    }

    /// Key of this geometry's [`Padded`] buffers: `tag` 0 is the im2col matrix, 1 the
    /// column phases.
    fn key(&self, tag: usize) -> Key {
        let s = self.s;
        [
            s.c_in,
            s.h,
            s.w,
            s.kh,
            s.kw,
            s.stride[0],
            s.stride[1],
            s.pad[0],
            s.pad[1],
            tag,
        ]
    }

    /// Every image-backed segment of the im2col matrix, shared by [`im2col`] and its
    /// adjoint: `(start in the matrix, start in the source rows, length)`; the source rows
    /// are `x`'s (stride 1) or its column phases' (see [`split_phases`]). Listed once per
    /// layer call: walking the nested iterator for every sample was 2% of a Fashion-MNIST
    /// training run.
    fn segments(&self) -> Vec<Segment> {
        let (h, row_len) = (self.s.h, self.row_len());
        self.runs()
            .into_iter()
            .enumerate()
            .filter(|(_, run)| run.hi > run.lo)
            .flat_map(move |(row, run)| {
                (0..self.ho()).filter_map(move |oh| {
                    let ih = self.in_row(oh, run.i)?;
                    Some(Segment {
                        at: row * self.l + oh * self.wo + run.lo,
                        base: (run.ci * h + ih) * row_len + run.offset,
                        len: run.hi - run.lo,
                    })
                })
            })
            .collect()
    }

    fn ho(&self) -> usize {
        self.l / self.wo
    }

    /// Length of one input row as the runs index it: `w`, or `stride * ceil(w / stride)`.
    fn row_len(&self) -> usize {
        let sw = self.s.stride[1];
        sw * self.s.w.div_ceil(sw)
    }
}

/// `cols[(ci, i, j), (oh, ow)] = x[ci, oh*sh + i - ph, ow*sw + j - pw]` (0 outside), for one
/// sample `x` of shape `[c_in, h, w]`; `cols` is `[k, l]` row-major, in the geometry's
/// [`Padded`] buffer: only the values read from the image are written, the zeros outside
/// it stay from the buffer's creation.
fn im2col<'a>(d: &Dims, segs: &[Segment], x: &[f32], padded: &'a mut Padded) -> &'a [f32] {
    let h = d.s.h;
    let row_len = d.row_len();
    let phases = (d.s.stride[1] != 1).then(|| {
        let mut phases = std::mem::take(padded.get_vec(d.key(1), d.s.c_in * h * row_len));
        split_phases(x, d.s.w, d.s.stride[1], &mut phases);
        phases
    });
    let src = phases.as_deref().unwrap_or(x);
    let cols = padded.get(d.key(0), d.k * d.l);
    vectorized(
        #[inline(always)]
        || {
            for &Segment { at, base, len } in segs {
                copy_short(&mut cols[at..at + len], &src[base..base + len]);
            }
        },
    );
    if let Some(phases) = phases {
        *padded.get_vec(d.key(1), 0) = phases;
    }
    padded.get(d.key(0), d.k * d.l)
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input position it was
/// read from. `dx` is one sample `[c_in, h, w]`.
fn col2im_add(d: &Dims, segs: &[Segment], cols: &[f32], dx: &mut [f32], phases: &mut Vec<f32>) {
    let (h, w, sw) = (d.s.h, d.s.w, d.s.stride[1]);
    let rows = d.s.c_in * h;
    let row_len = d.row_len();
    let dst: &mut [f32] = if sw == 1 {
        dx
    } else {
        phases.clear();
        phases.resize(rows * row_len, 0.0);
        phases
    };
    // One vectorised call for all segments: they are short (a row of output columns each,
    // thousands per sample).
    vectorized(
        #[inline(always)]
        || {
            for &Segment { at, base, len } in segs {
                let (dst, src) = (&mut dst[base..base + len], &cols[at..at + len]);
                dst.iter_mut().zip(src).for_each(|(o, v)| *o += *v);
            }
        },
    );
    let wp = w.div_ceil(sw);
    let rows = dx.chunks_exact_mut(w).zip(phases.chunks_exact(row_len));
    if sw == 2 {
        // Interleave the two phases back.
        vectorized(
            #[inline(always)]
            || {
                for (out, ph) in rows {
                    let (even, odd) = ph.split_at(wp);
                    interleave_add(&even[..w.div_ceil(2)], &odd[..w / 2], out);
                }
            },
        );
    } else if sw > 2 {
        for (out, ph) in rows {
            for (c, o) in out.iter_mut().enumerate() {
                *o += ph[(c % sw) * wp + c / sw];
            }
        }
    }
}

/// The im2col matrix of one sample: the sample itself for a pointwise convolution,
/// otherwise built by [`im2col`].
fn cols_of<'a>(d: &Dims, segs: &[Segment], x: &'a [f32], padded: &'a mut Padded) -> &'a [f32] {
    if d.is_pointwise() {
        x
    } else {
        im2col(d, segs, x, padded)
    }
}

/// Splits every row of `w` values of `x` into its `stride` column phases, each padded to
/// `ceil(w / stride)`: phase `p` of a row holds columns `p, p + stride, ...`. A strided
/// convolution then reads (and writes back) each kernel column as one contiguous run. Only
/// the image's values are written (`out` is a [`Padded`] buffer, zero elsewhere).
fn split_phases(x: &[f32], w: usize, stride: usize, out: &mut [f32]) {
    let wp = w.div_ceil(stride);
    for (src, dst) in x.chunks_exact(w).zip(out.chunks_exact_mut(stride * wp)) {
        if stride == 2 {
            let (even, odd) = dst.split_at_mut(wp);
            let pairs = src.chunks_exact(2);
            if let [last] = pairs.remainder() {
                even[wp - 1] = *last;
            }
            vectorized(
                #[inline(always)]
                || {
                    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                },
            );
        } else {
            for (c, v) in src.iter().enumerate() {
                dst[(c % stride) * wp + c / stride] = *v;
            }
        }
    }
}

/// Per-thread buffers, reused across calls: a fresh zeroed buffer per call and chunk was a
/// measurable share of a step (page faults and memset). In `dcols`, `phases` and `wide`
/// every element is written (or zeroed) before it is read; `padded` keeps its zeros.
#[derive(Default)]
struct Scratch {
    /// Input-gradient im2col matrix (strided path).
    dcols: Vec<f32>,
    /// Column-phase accumulator of the strided input gradient.
    phases: Vec<f32>,
    /// The output gradient transposed, for [`WeightGrad`].
    dy_t: Vec<f32>,
    /// Stride-1 path: the wide output.
    wide: Vec<f32>,
    /// im2col matrices, column phases, row copies and wide output gradients.
    padded: Padded,
}

/// Buffers whose zero padding is written once: one per geometry (layer shape), and a
/// geometry always writes the same positions, so the positions it never writes stay zero.
/// Rewriting the padding for every sample was thousands of tiny memsets per layer.
#[derive(Default)]
struct Padded(rustc_hash::FxHashMap<Key, Vec<f32>>);

/// A buffer's geometry (shape without the batch) and which buffer of it.
type Key = [usize; 10];

impl Padded {
    /// The buffer for `key`, created zeroed with `len` values if new.
    fn get_vec(&mut self, key: Key, len: usize) -> &mut Vec<f32> {
        // A bound against unbounded growth when many shapes pass through one thread.
        if self.0.len() >= 64 && !self.0.contains_key(&key) {
            self.0.clear();
        }
        self.0.entry(key).or_insert_with(|| vec![0.0; len])
    }

    fn get(&mut self, key: Key, len: usize) -> &mut [f32] {
        let v = self.get_vec(key, len);
        debug_assert_eq!(v.len(), len);
        &mut v[..]
    }
}

/// The first `len` elements of `v`, growing it if needed but never shrinking it: layers of
/// different sizes alternate, and a shrink followed by a regrow would zero-fill every time.
fn buf(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

thread_local! {
    /// The weight gradient's per-chunk partials, kept between calls of [`backward`] on this
    /// thread: every chunk's first sample overwrites its partial in full, so a kept buffer
    /// needs no zeroing (zeroing fresh ones was 1.3% of a ResNet-20 training step).
    static PARTIALS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's partials with at least `len` values (grown as [`buf`] grows, never
/// shrunk; an empty one if a call further up this thread holds them).
fn take_partials(len: usize) -> Vec<f32> {
    let mut v = PARTIALS.take();
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

fn give_back_partials(v: Vec<f32>) {
    PARTIALS.set(v);
}

impl Scratch {
    /// This thread's buffers (empty ones if already taken).
    fn take() -> Self {
        SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }

    fn give_back(self) {
        SCRATCH.with(|s| *s.borrow_mut() = self);
    }
}

/// A row-major or transposed view for [`gemm`]: element (r, c) is `data[r*rs + c*cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }
    fn transposed(data: &'a [f32], cols_of_stored: usize) -> Self {
        View {
            data,
            rs: 1,
            cs: cols_of_stored,
        }
    }
    /// Largest index read for an `r x c` view.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// Where [`gemm`] writes its `m x n` result: element (r, c) goes to `dst[r*rs + c*cs]`.
#[derive(Clone, Copy)]
struct Out {
    rs: usize,
    cs: usize,
}

impl Out {
    /// Row-major with `n` columns.
    fn rows(n: usize) -> Self {
        Out { rs: n, cs: 1 }
    }
    /// Column-major with `m` rows, i.e. the transpose stored row-major.
    fn cols(m: usize) -> Self {
        Out { rs: 1, cs: m }
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + lhs[m, k] @ rhs[k, n]`, one thread.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    out: Out,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let dst_view = View {
        data: dst,
        rs: out.rs,
        cs: out.cs,
    };
    assert!(dst_view.fits(m, n) && lhs.fits(m, k) && rhs.fits(k, n));
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[r * out.rs + c * out.cs] = 0.0;
                }
            }
        }
        return;
    }
    let (dst_rs, dst_cs) = (out.rs, out.cs);
    // SAFETY: the asserts above bound every index gemm reads and writes (`fits`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Fewest row copies (`c_in * kh`, the depth of each of the `kw` GEMMs) for which the
/// padded-width path beats im2col. Measured with 2 threads, batch 64, 32x32: at 9 (an RGB
/// input layer) im2col's single GEMM of depth 27 was 1.6x faster forward and 2x faster
/// backward; at 48 (16 channels) the padded-width path was ~10% faster on ResNet-20 training.
const WIDE_MIN_ROWS: usize = 32;

/// Geometry of a stride-1 convolution computed on the padded-width grid.
///
/// Output row `oh` is laid out with the padded row length `wp` instead of `wo`, so the
/// input value under kernel tap (i, j) of output position `p = oh * wp + ow` is element
/// `p + i * wp + j` of the zero-padded plane: a constant offset. Every kernel row `i` then
/// needs one shifted copy of the padded plane ("row copies", `kh` of them instead of
/// im2col's `kh * kw`), and every kernel column `j` is one GEMM reading those copies at
/// offset `j`. The last `wp - wo` columns of each wide output row are junk and dropped.
#[derive(Clone, Copy)]
struct Stride1 {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
    /// Row length of the padded plane: `w + pw` (see [`Stride1::of`]).
    wp: usize,
    ho: usize,
    wo: usize,
    /// Wide output length per channel: `ho * wp`.
    lp: usize,
    /// Length of one row copy: `lp + kw - 1` (the largest shift reads `kw - 1` further).
    r: usize,
}

impl Stride1 {
    /// The stride-1 geometry, unless the shape has another stride, padding of a kernel's
    /// size or more (the shifted views would start outside the padded plane's rows), is
    /// pointwise (already im2col-free), or has fewer than [`WIDE_MIN_ROWS`] row copies.
    fn of(s: &Conv2dShape) -> Option<Self> {
        let [ph, pw] = s.pad;
        if s.c_in * s.kh < WIDE_MIN_ROWS
            || s.stride != [1, 1]
            || ph >= s.kh
            || pw >= s.kw
            || (s.kh, s.kw, ph, pw) == (1, 1, 0, 0)
        {
            return None;
        }
        let [ho, wo] = s.out_hw()?;
        // Rows share their padding: a row's right padding is the next row's left padding
        // (both zero), so a row is `w + pw` long and an output row has `kw - 1 - pw` junk
        // columns instead of `kw - 1` (ResNet-20's 8x8 layers: 72 wide positions for 64
        // outputs instead of 80; 2-5% faster forward and backward).
        let wp = s.w + pw;
        Some(Stride1 {
            c_in: s.c_in,
            h: s.h,
            w: s.w,
            c_out: s.c_out,
            kh: s.kh,
            kw: s.kw,
            ph,
            pw,
            wp,
            ho,
            wo,
            lp: ho * wp,
            r: ho * wp + s.kw - 1,
        })
    }

    /// Rows of a [`Stride1::row_copies`] matrix: one per (input channel, kernel row).
    fn rows(&self) -> usize {
        self.c_in * self.kh
    }

    /// The input gradient of this convolution as a stride-1 convolution of the output
    /// gradient: full correlation with the flipped kernel, channels swapped.
    fn transposed(&self) -> Conv2dShape {
        Conv2dShape {
            batch: 1,
            c_in: self.c_out,
            h: self.ho,
            w: self.wo,
            c_out: self.c_in,
            kh: self.kh,
            kw: self.kw,
            stride: [1, 1],
            pad: [self.kh - 1 - self.ph, self.kw - 1 - self.pw],
        }
    }

    /// The row copies of one sample `x` (`[c_in, h, w]`): `copies[(ci, i), q] =
    /// xpad[ci, i + q / wp, q % wp]` for `q < r`, where `xpad` is `x` zero-padded by
    /// (ph, pw), plus `kw - 1` zeros after each plane (read only by junk columns).
    /// `xpad` is built first (one short copy per image row into a [`Padded`] buffer), then
    /// each row copy is one long copy out of it: a third of the short copies of building
    /// each row copy from `x`.
    fn row_copies<'a>(&self, x: &[f32], padded: &'a mut Padded) -> &'a [f32] {
        let plane = self.plane();
        let xpad = self.padded_plane(x, padded);
        let copies = padded.get(self.copies_key(), self.rows() * self.r);
        for (row, dst) in copies.chunks_exact_mut(self.r).enumerate() {
            let (ci, i) = (row / self.kh, row % self.kh);
            // i * wp + r == plane for i == kh - 1: the last copy ends with the plane.
            dst.copy_from_slice(&xpad[ci * plane + i * self.wp..][..self.r]);
        }
        self.give_back_plane(xpad, padded);
        padded.get(self.copies_key(), self.rows() * self.r)
    }

    /// The padded plane this geometry reads.
    fn planes(&self) -> Planes {
        Planes {
            c_in: self.c_in,
            h: self.h,
            w: self.w,
            ph: self.ph,
            pw: self.pw,
            kw: self.kw,
        }
    }

    fn plane(&self) -> usize {
        self.planes().plane()
    }

    fn padded_plane(&self, x: &[f32], padded: &mut Padded) -> Vec<f32> {
        self.planes().build(x, padded)
    }

    fn give_back_plane(&self, xpad: Vec<f32>, padded: &mut Padded) {
        self.planes().give_back(xpad, padded)
    }

    /// The direct kernel's operands for `weight` (`[c_out, c_in, kh, kw]`), when it runs
    /// here: AVX-512 and whole panels of output channels.
    fn direct(&self, weight: &[f32]) -> Option<DenseDirect> {
        if !direct::available() || !self.c_out.is_multiple_of(direct::NR) {
            return None;
        }
        // Tap (ci, i, j) of output position p reads xpad[p + offset], in the weight's order.
        let offsets = self.planes().tap_offsets(self.kh);
        Some(DenseDirect {
            direct: Direct {
                packed: direct::pack(weight, self.c_out, offsets.len()),
                offsets,
            },
            dense: direct::Dense::new(self.ho, self.wp, self.wo),
        })
    }

    fn copies_key(&self) -> Key {
        [
            self.c_in, self.h, self.w, self.kh, self.kw, self.ph, self.pw, self.wp, 0, 2,
        ]
    }

    /// One sample's convolution into `y` (`[c_out, ho, wo]`), `wide` as scratch: with the
    /// direct kernel when `direct` is given (see [`Stride1::direct`]), else `kw` GEMMs, one
    /// per kernel column, accumulating the wide output.
    #[allow(clippy::too_many_arguments)]
    fn forward_sample(
        &self,
        x: &[f32],
        weight: &[f32],
        map: &OutputMap,
        y: &mut [MaybeUninit<f32>],
        padded: &mut Padded,
        wide: &mut Vec<f32>,
        direct: Option<&DenseDirect>,
    ) {
        if let Some(d) = direct {
            let xpad = self.padded_plane(x, padded);
            d.conv(&xpad, map, y);
            self.give_back_plane(xpad, padded);
            return;
        }
        let copies = self.row_copies(x, padded);
        let wide = buf(wide, self.c_out * self.lp);
        let k = self.c_in * self.kh * self.kw;
        for j in 0..self.kw {
            // wide[c_out, p] (+)= W[c_out, (ci, i), j] @ copies[(ci, i), p + j]
            gemm(
                self.c_out,
                self.lp,
                self.rows(),
                wide,
                Out::rows(self.lp),
                View {
                    data: &weight[j..],
                    rs: k,
                    cs: self.kw,
                },
                View {
                    data: &copies[j..],
                    rs: self.r,
                    cs: 1,
                },
                j > 0,
            );
        }
        self.compact(wide, self.lp, map, y);
    }

    /// `y[co, oh, ow] = map(wide[co * ld + oh * wp + ow])`: drops the junk columns.
    fn compact(&self, wide: &[f32], ld: usize, map: &OutputMap, y: &mut [MaybeUninit<f32>]) {
        compact(wide, ld, self.wp, [self.ho, self.wo], map, y);
    }

    /// Adds one sample's weight gradient into `dw_t` (`[(ci, i, j), c_out]`, i.e. dW
    /// transposed, like the im2col path), accumulating unless `first`.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad_sample(
        &self,
        x: &[f32],
        dy: &[f32],
        dw_t: &mut [f32],
        first: bool,
        padded: &mut Padded,
        stacked: bool,
    ) {
        if stacked {
            self.weight_grad_stacked(x, dy, dw_t, first, padded);
            return;
        }
        // The output gradient on the wide grid, zero in the junk columns so they add
        // nothing (a [`Padded`] buffer: only the values are written).
        let key = [self.c_out, self.ho, self.wo, self.wp, 0, 0, 0, 0, 0, 3];
        let mut dy_wide = std::mem::take(padded.get_vec(key, self.c_out * self.lp));
        for (dst, src) in dy_wide
            .chunks_exact_mut(self.wp)
            .zip(dy.chunks_exact(self.wo))
        {
            copy_short(&mut dst[..self.wo], src);
        }
        let copies = self.row_copies(x, padded);
        for j in 0..self.kw {
            // dW[c_out, (ci, i), j] += dY[c_out, p] @ copies[(ci, i), p + j]^T
            gemm(
                self.c_out,
                self.rows(),
                self.lp,
                &mut dw_t[j * self.c_out..],
                Out {
                    rs: 1,
                    cs: self.kw * self.c_out,
                },
                View::rows(&dy_wide, self.lp),
                View {
                    data: &copies[j..],
                    rs: 1,
                    cs: self.r,
                },
                !first,
            );
        }
        *padded.get_vec(key, 0) = dy_wide;
    }
}

/// One sample's input zero-padded by (ph, pw) in rows of `wp = w + pw`: a row's right
/// padding is the next row's left padding (both zero). Each channel's plane is followed by
/// `kw - 1` zeros (read only by junk columns), the whole by a tile of zeros for
/// [`direct::conv`]'s rounded-up last vectors. A tap (ci, i, j) of the output position
/// whose window starts at padded (r, c) is element `ci * plane + (r + i) * wp + c + j`,
/// as long as `pw < kw` (then no read passes the `kw - 1` zeros after a plane).
#[derive(Clone, Copy)]
struct Planes {
    c_in: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    kw: usize,
}

impl Planes {
    /// The padded planes of the input of `s`.
    fn of(s: &Conv2dShape) -> Self {
        Planes {
            c_in: s.c_in,
            h: s.h,
            w: s.w,
            ph: s.pad[0],
            pw: s.pad[1],
            kw: s.kw,
        }
    }

    /// Offset of each tap `(ci, i, j)` of a `kh`-row kernel from its window's start, in the
    /// weight's order: `ci * plane + i * wp + j`.
    fn tap_offsets(&self, kh: usize) -> Vec<usize> {
        let (plane, wp) = (self.plane(), self.wp());
        (0..self.c_in)
            .flat_map(|ci| {
                (0..kh).flat_map(move |i| (0..self.kw).map(move |j| ci * plane + i * wp + j))
            })
            .collect()
    }

    fn wp(&self) -> usize {
        self.w + self.pw
    }

    /// Length of one channel's plane.
    fn plane(&self) -> usize {
        (self.h + 2 * self.ph) * self.wp() + self.kw - 1
    }

    fn key(&self) -> Key {
        let Planes {
            c_in,
            h,
            w,
            ph,
            pw,
            kw,
        } = *self;
        [c_in, h, w, ph, pw, kw, 0, 0, 0, 4]
    }

    /// The padded planes of `x` (`[c_in, h, w]`): a [`Padded`] buffer, taken out of
    /// `padded` (only the image's values are written); hand it back with
    /// [`Planes::give_back`].
    fn build(&self, x: &[f32], padded: &mut Padded) -> Vec<f32> {
        let (h, w, ph, pw, wp) = (self.h, self.w, self.ph, self.pw, self.wp());
        let plane = self.plane();
        let len = self.c_in * plane + direct::MR;
        let mut xpad = std::mem::take(padded.get_vec(self.key(), len));
        // One call for the whole sample: the rows are short.
        vectorized(
            #[inline(always)]
            || {
                for (src, dst) in x.chunks_exact(h * w).zip(xpad.chunks_exact_mut(plane)) {
                    for (row, dst) in src.chunks_exact(w).zip(dst[ph * wp + pw..].chunks_mut(wp)) {
                        copy_short(&mut dst[..w], row);
                    }
                }
            },
        );
        xpad
    }

    fn give_back(&self, xpad: Vec<f32>, padded: &mut Padded) {
        *padded.get_vec(self.key(), 0) = xpad;
    }
}

/// Geometry of the weight gradient on the kernel of [`wgrad`] (AVX-512, whole vectors of
/// output channels, 3- or 1-wide kernels, any stride): the input read in place from its
/// [`Planes`], the output gradient transposed per sample.
struct WeightGrad {
    planes: Planes,
    c_out: usize,
    kw: usize,
    /// Start of each row `(ci, i)` of taps in the planes: `ci * plane + i * wp`.
    rows: Vec<usize>,
    /// Start of each output position's window: `oh * sh * wp + ow * sw`.
    bases: Vec<usize>,
}

impl WeightGrad {
    /// For the shapes [`wgrad::takes`] and padding narrower than the kernel; not for
    /// pointwise stride-1 convolutions, whose input already is the GEMM's operand.
    fn of(s: &Conv2dShape) -> Option<Self> {
        let pw = s.pad[1];
        if !wgrad::takes(s.c_out, s.kw)
            || pw >= s.kw
            || (s.kh, s.kw, s.stride, s.pad) == (1, 1, [1, 1], [0, 0])
        {
            return None;
        }
        let [ho, wo] = s.out_hw()?;
        let planes = Planes::of(s);
        let (plane, wp) = (planes.plane(), planes.wp());
        let [sh, sw] = s.stride;
        let rows = (0..s.c_in)
            .flat_map(|ci| (0..s.kh).map(move |i| ci * plane + i * wp))
            .collect();
        let bases = (0..ho)
            .flat_map(|oh| (0..wo).map(move |ow| oh * sh * wp + ow * sw))
            .collect();
        Some(WeightGrad {
            planes,
            c_out: s.c_out,
            kw: s.kw,
            rows,
            bases,
        })
    }

    /// Adds one sample's weight gradient into `dw_t` (`[(ci, i, j), c_out]`), accumulating
    /// unless `first`; `dy_t` is scratch for the transposed output gradient.
    fn sample(
        &self,
        x: &[f32],
        dy: &[f32],
        dw_t: &mut [f32],
        first: bool,
        padded: &mut Padded,
        dy_t: &mut Vec<f32>,
    ) {
        let n = self.bases.len();
        let dy_t = buf(dy_t, self.c_out * n);
        wgrad::transpose(dy, self.c_out, n, dy_t);
        let xpad = self.planes.build(x, padded);
        wgrad::weight_grad(
            &xpad,
            &self.rows,
            self.kw,
            &self.bases,
            dy_t,
            self.c_out,
            dw_t,
            !first,
        );
        self.planes.give_back(xpad, padded);
    }
}

/// `y[co, oh, ow] = wide[co * ld + oh * wp + ow] (+ bias[co])`: the output without the
/// wide grid's junk columns (`wp - wo` per row).
fn compact(
    wide: &[f32],
    ld: usize,
    wp: usize,
    [ho, wo]: [usize; 2],
    map: &OutputMap,
    y: &mut [MaybeUninit<f32>],
) {
    // Every element of `y` is written (callers rely on it): whole planes, one per channel
    // of `wide`, each row of `wo` values from a row of `wp >= wo`.
    let planes = y.len() / (ho * wo);
    assert!(
        y.len() == planes * ho * wo && wide.len().div_ceil(ld) >= planes && wp >= wo,
        "conv2d: compact shapes"
    );
    // Without junk columns a plane is one row.
    let (row, stride) = if wp == wo {
        (ho * wo, ho * wo)
    } else {
        (wo, wp)
    };
    let epilogue = &map.epilogue;
    for (co, (plane, wide)) in y.chunks_exact_mut(ho * wo).zip(wide.chunks(ld)).enumerate() {
        let wide = &wide[..ho * wp];
        let (k, b) = map.channel(co);
        let residual = epilogue
            .residual
            .map_or(&[][..], |r| &r[co * ho * wo..][..ho * wo]);
        vectorized(
            #[inline(always)]
            || {
                for (i, (dst, src)) in plane
                    .chunks_exact_mut(row)
                    .zip(wide.chunks_exact(stride))
                    .enumerate()
                {
                    let r = residual.get(i * row..(i + 1) * row).unwrap_or(&[]);
                    epilogue.write_affine(dst, &src[..row], r, k, b);
                }
            },
        );
    }
}

/// Fewest taps (`c_in * kh * kw`) for which a strided convolution runs on [`chanvec`]
/// rather than on phase planes. In alternation, 2 threads, forward with the inference map:
/// 144 taps (ResNet-20's 16 -> 32 layer) 1.09-1.10x faster, 288 (its 32 -> 64) 1.25-1.33x,
/// 576 (the CNN's 64 -> 128) 1.21-1.36x; the CNN's 32x32 32 -> 64 layer, whose phase grid
/// wastes little (272 positions for 256), 0.99x at batch 64 and 1.08-1.11x at 128.
const CHANVEC_MIN_TAPS: usize = 128;

/// Geometry of a strided convolution on the channels-in-vector kernel of [`chanvec`]: the
/// input read in place from its [`Planes`] (output `(oh, ow)` under tap `(ci, i, j)` reads
/// `ci * plane + (oh * sh + i) * wp + ow * sw + j`), no phase split.
struct ChanTiles {
    planes: Planes,
    grid: chanvec::Grid,
    /// Offset of each tap, in the weight's order.
    offsets: Vec<usize>,
}

impl ChanTiles {
    /// For strided convolutions with at least [`CHANVEC_MIN_TAPS`] taps, whole blocks of
    /// output channels, output rows of whole tiles and padding narrower than the kernel; and
    /// for stride-1 ones of the same kind whose output rows are one tile (8 wide), where the
    /// padded-width grid computes 72-80 positions per 64 outputs: ResNet-20's 64-channel 8x8
    /// layer ran 1.12x faster here. Wider stride-1 rows waste little on that grid (16x16 and
    /// 32x32 layers ran 0.90-0.92x here).
    fn of(s: &Conv2dShape) -> Option<Self> {
        let pw = s.pad[1];
        let [ho, wo] = s.out_hw()?;
        if (s.stride == [1, 1] && wo > chanvec::ROW)
            || s.c_in * s.kh * s.kw < CHANVEC_MIN_TAPS
            || !s.c_out.is_multiple_of(chanvec::BLOCK)
            || !wo.is_multiple_of(chanvec::ROW)
            || pw >= s.kw
            || !chanvec::available()
        {
            return None;
        }
        let planes = Planes::of(s);
        Some(ChanTiles {
            grid: chanvec::Grid {
                ho,
                wo,
                row_step: s.stride[0] * planes.wp(),
                stride: s.stride[1],
            },
            offsets: planes.tap_offsets(s.kh),
            planes,
        })
    }

    /// One sample's convolution into `y`, mapped by `map`.
    fn forward_sample(
        &self,
        x: &[f32],
        packed: &[f32],
        map: &OutputMap,
        y: &mut [MaybeUninit<f32>],
        padded: &mut Padded,
    ) {
        let xpad = self.planes.build(x, padded);
        chanvec::conv(&xpad, &self.offsets, packed, self.grid, map, y);
        self.planes.give_back(xpad, padded);
    }
}

/// Fewest taps (`c_in * kh * kw`) for which a stride-1 convolution with few channels runs
/// on the direct kernel rather than im2col + `gemm`: with 2 threads, batch 64, 3x3 kernels,
/// 3 input channels (27 taps) ran 0.81x (16 outputs) and 0.95x (32) of im2col's time. One
/// input channel (9 taps, 28x28, 8 outputs: the Fashion-MNIST CNN's first layer) ran 1.10x
/// while the direct kernel's output needed a compaction pass, 0.56x since it stores straight
/// into the dense output.
const DIRECT_MIN_TAPS: usize = 9;

/// Geometry of a convolution run by the direct kernel on phase planes (strided, or stride
/// 1 with too few channels for [`Stride1`]: then one plane per channel, the padded input).
///
/// The zero-padded input is split into `sh * sw` phase planes per channel, phase (a, b)
/// holding padded rows `a, a + sh, ...` and columns `b, b + sw, ...` (`hr x wr` values).
/// Output position `p = oh * wr + ow` under tap (i, j) then reads phase
/// `(i % sh, j % sw)` at `p + (i / sh) * wr + j / sw`: a constant offset per tap, as on
/// the stride-1 padded-width grid, with `wr - wo` junk columns per output row.
#[derive(Clone, Copy)]
struct Phased {
    s: Conv2dShape,
    ho: usize,
    wo: usize,
    /// Rows and columns of a phase plane.
    hr: usize,
    wr: usize,
}

impl Phased {
    /// For convolutions with whole panels of output channels where the direct kernel runs
    /// (AVX-512): strided ones, and stride-1 ones with too few input channels for
    /// [`Stride1`] (an RGB input layer: one phase, the padded plane). Not for 1x1 kernels:
    /// strided, they read one phase of the `sh * sw` built, and im2col's subsampling copy
    /// measured faster (0.72 vs 0.80 ms for a ResNet-20 projection shortcut); with stride
    /// 1 the input already is im2col's matrix. Nor for stride 1 with fewer than
    /// [`DIRECT_MIN_TAPS`] taps.
    fn of(s: &Conv2dShape) -> Option<Self> {
        let stride1 = s.stride == [1, 1];
        if (stride1 && (Stride1::of(s).is_some() || s.c_in * s.kh * s.kw < DIRECT_MIN_TAPS))
            || (s.kh, s.kw) == (1, 1)
            || !s.c_out.is_multiple_of(direct::NR)
            || !direct::available()
        {
            return None;
        }
        let [ho, wo] = s.out_hw()?;
        Some(Phased {
            s: *s,
            ho,
            wo,
            hr: (s.h + 2 * s.pad[0]).div_ceil(s.stride[0]),
            wr: (s.w + 2 * s.pad[1]).div_ceil(s.stride[1]),
        })
    }

    fn phase_len(&self) -> usize {
        self.hr * self.wr
    }

    /// Offset of tap (ci, i, j), in the weight's order.
    fn offsets(&self) -> Vec<usize> {
        let Conv2dShape {
            c_in,
            kh,
            kw,
            stride: [sh, sw],
            ..
        } = self.s;
        let mut offsets = Vec::with_capacity(c_in * kh * kw);
        for ci in 0..c_in {
            for i in 0..kh {
                for j in 0..kw {
                    let phase = (ci * sh + i % sh) * sw + j % sw;
                    offsets.push(phase * self.phase_len() + (i / sh) * self.wr + j / sw);
                }
            }
        }
        offsets
    }

    /// The direct kernel's operands for `weight`.
    fn direct(&self, weight: &[f32]) -> DenseDirect {
        let offsets = self.offsets();
        DenseDirect {
            direct: Direct {
                packed: direct::pack(weight, self.s.c_out, offsets.len()),
                offsets,
            },
            dense: direct::Dense::new(self.ho, self.wr, self.wo),
        }
    }

    /// One sample's phase planes (a [`Padded`] buffer: only the image's values are
    /// written), plus a tile of zeros for the kernel's rounded-up last vectors.
    fn phases<'a>(&self, x: &[f32], padded: &'a mut Padded) -> &'a [f32] {
        let Conv2dShape {
            c_in,
            h,
            w,
            stride: [sh, sw],
            pad: [ph, pw],
            ..
        } = self.s;
        let key = [c_in, h, w, sh, sw, ph, pw, 0, 0, 6];
        let len = c_in * sh * sw * self.phase_len() + direct::MR;
        let out = padded.get(key, len);
        let (pl, wr) = (self.phase_len(), self.wr);
        // One call for the whole sample: the loops are short (a row each).
        vectorized(
            #[inline(always)]
            || {
                for (ci, x) in x.chunks_exact(h * w).enumerate() {
                    // Phase row of image row ih: (a, r) = ((ih + ph) % sh, (ih + ph) / sh), stepped
                    // instead of divided (a division per row was a tenth of a CNN inference).
                    let (mut a, mut r) = (ph % sh, ph / sh);
                    for row in x.chunks_exact(w) {
                        let base = (ci * sh + a) * sw;
                        if sw == 1 {
                            copy_short(&mut out[base * pl + r * wr + pw..][..w], row);
                        } else if sw == 2 {
                            // Even and odd image columns go to the phases of their padded
                            // columns (no division or strided step per element).
                            let (b0, c0, c1) = (pw % 2, pw / 2, pw.div_ceil(2));
                            let (e, o) = (base + b0, base + 1 - b0);
                            let (lo, hi) = out.split_at_mut(e.max(o) * pl);
                            let (even, odd) = if e < o {
                                (&mut lo[e * pl..], hi)
                            } else {
                                (hi, &mut lo[o * pl..])
                            };
                            let even = &mut even[r * wr + c0..][..w.div_ceil(2)];
                            let odd = &mut odd[r * wr + c1..][..w / 2];
                            deinterleave(row, even, odd);
                        } else {
                            for (iw, v) in row.iter().enumerate() {
                                let (b, c) = ((iw + pw) % sw, (iw + pw) / sw);
                                out[(base + b) * pl + r * wr + c] = *v;
                            }
                        }
                        a += 1;
                        if a == sh {
                            (a, r) = (0, r + 1);
                        }
                    }
                }
            },
        );
        padded.get(key, len)
    }

    /// One sample's convolution into `y` with the direct kernel.
    fn forward_sample(
        &self,
        x: &[f32],
        d: &DenseDirect,
        map: &OutputMap,
        y: &mut [MaybeUninit<f32>],
        padded: &mut Padded,
    ) {
        d.conv(self.phases(x, padded), map, y);
    }
}

/// The input gradient of a strided convolution on the direct kernel, one sub-convolution
/// per stride phase.
///
/// Input row `r` of the padded input (`r = ih + ph`) is reached by the kernel rows
/// `i = a + sh * t` with `a = r % sh`, from output row `r / sh - t`. So the rows of phase
/// `a` (and likewise the columns of phase `b`) get the full stride-1 correlation of `dy`
/// with the flipped sub-kernel `W[:, :, a + sh * t, b + sw * t']`: a small stride-1
/// convolution per phase, on the grid of one padded plane of `dy` (padded for the largest
/// sub-kernel; a smaller one's rows end in junk columns), scattered back to every `sh`-th
/// row and `sw`-th column. (im2col's adjoint, the alternative, ran this at 34-43 GFLOP/s
/// per core against 80-100 for the kernel.)
struct PhasedDx {
    s: Conv2dShape,
    /// `dy` zero-padded for the largest sub-kernel, which every phase reads (each at its
    /// own offset): one copy of `dy` per sample instead of one per phase.
    planes: Planes,
    phases: Vec<DxPhase>,
    /// Stride 2 across the columns, with each pair of phases `(a, 0)`, `(a, 1)` filling the
    /// even and the odd columns of its rows completely: both are written as one interleaved
    /// row instead of two strided scatters (the per-row calls were 5% of a Fashion-MNIST
    /// training run).
    paired: bool,
    /// With `paired`: the input rows no window reaches, the only ones zeroed (the pairs
    /// write every other row in full; zeroing whole planes first was 1.3% of a
    /// Fashion-MNIST training run).
    unreached: Vec<usize>,
}

/// Most output channels for [`PhasedDx`]: with 2 threads, batch 64, 3x3 stride-2 layers
/// ran 0.79-0.87x of im2col's time with 32 and 64 output channels, but 1.07x with 128
/// (64 -> 128 channels on 16x16: the phases' taps then read more than L1 holds).
const PHASED_DX_MAX_CHANNELS: usize = 64;

/// One stride phase of [`PhasedDx`].
struct DxPhase {
    /// The phase: padded input rows `a, a + sh, ...`, columns `b, b + sw, ...`.
    a: usize,
    /// Output row `u` of the correlation is padded input row `a + sh * u`; its rows lie on
    /// the shared plane's grid (`planes.wp()` apart), of which the first `wq` columns are
    /// the phase's (`wq` = `wo` + its sub-kernel's width - 1), the rest junk.
    rows: usize,
    /// Rows `u` whose input row `a + sh * u - ph` is inside the image.
    in_rows: std::ops::Range<usize>,
    /// The first correlation column inside the image (`v0`), its input column (`iw0`), and
    /// how many columns, `sw` input columns apart, reach the image.
    v0: usize,
    iw0: usize,
    count: usize,
    direct: Direct,
}

impl PhasedDx {
    /// For strided convolutions with more than a 1x1 kernel (a strided 1x1's input gradient
    /// is one GEMM and a scatter), whole panels of input channels, at most
    /// [`PHASED_DX_MAX_CHANNELS`] output channels, where the direct kernel runs (AVX-512).
    fn of(s: &Conv2dShape, weight: &[f32]) -> Option<Self> {
        if s.stride == [1, 1]
            || (s.kh, s.kw) == (1, 1)
            || !s.c_in.is_multiple_of(direct::NR)
            || s.c_out > PHASED_DX_MAX_CHANNELS
            || !direct::available()
        {
            return None;
        }
        let [ho, wo] = s.out_hw()?;
        let ([sh, sw], [ph, pw]) = (s.stride, s.pad);
        // Sub-kernel size of phase (a, b): taps a, a + sh, ... of the kernel's rows (alike
        // for columns). Phase (0, 0) has the largest.
        let kt = |a: usize, b: usize| [(s.kh - a).div_ceil(sh), (s.kw - b).div_ceil(sw)];
        let km = kt(0, 0);
        let planes = Planes {
            c_in: s.c_out,
            h: ho,
            w: wo,
            ph: km[0] - 1,
            pw: km[1] - 1,
            kw: km[1],
        };
        let (plane, wq_all) = (planes.plane(), planes.wp());
        let mut phases = Vec::new();
        for a in 0..sh.min(s.kh) {
            for b in 0..sw.min(s.kw) {
                let kt = kt(a, b);
                // The phase's own zero padding is kt - 1; the shared plane has more, so its
                // taps start that much further in (rows alike).
                let (dh, dw) = (km[0] - kt[0], km[1] - kt[1]);
                // Tap (co, t, t') reads padded dy (t + dh, t' + dw) from the window's start
                // and weighs it with the flipped sub-kernel: W[co, ci, a + sh * (kt0-1-t), ..].
                let k = s.c_out * kt[0] * kt[1];
                let mut offsets = Vec::with_capacity(k);
                let mut w = vec![0.0f32; s.c_in * k];
                for co in 0..s.c_out {
                    for t in 0..kt[0] {
                        for u in 0..kt[1] {
                            let tap = offsets.len();
                            offsets.push(co * plane + (t + dh) * wq_all + u + dw);
                            let i = a + sh * (kt[0] - 1 - t);
                            let j = b + sw * (kt[1] - 1 - u);
                            for ci in 0..s.c_in {
                                w[ci * k + tap] =
                                    weight[((co * s.c_in + ci) * s.kh + i) * s.kw + j];
                            }
                        }
                    }
                }
                let rows = ho + kt[0] - 1;
                // Correlation row u is padded input row a + sh * u, i.e. input row
                // a + sh * u - ph where that is inside the image (columns alike).
                let u0 = ph.saturating_sub(a).div_ceil(sh);
                let in_rows = u0..rows.min((s.h + ph).saturating_sub(a).div_ceil(sh));
                let wq = wo + kt[1] - 1;
                let v0 = pw.saturating_sub(b).div_ceil(sw);
                let iw0 = b + sw * v0 - pw;
                let count = wq
                    .saturating_sub(v0)
                    .min(s.w.saturating_sub(iw0).div_ceil(sw));
                phases.push(DxPhase {
                    a,
                    rows,
                    in_rows,
                    v0,
                    iw0,
                    count,
                    direct: Direct {
                        packed: direct::pack(&w, s.c_in, k),
                        offsets,
                    },
                });
            }
        }
        // Pairs (a, 0), (a, 1) (consecutive: `b` runs fastest) that start on columns 0 and 1
        // and reach the row's end: together they write every column of their rows.
        let paired = sw == 2
            && phases.len() == 2 * sh.min(s.kh)
            && phases.chunks_exact(2).all(|pair| {
                let (e, o) = if pair[0].iw0 == 0 {
                    (&pair[0], &pair[1])
                } else {
                    (&pair[1], &pair[0])
                };
                e.iw0 == 0 && o.iw0 == 1 && e.count == s.w.div_ceil(2) && o.count == s.w / 2
            });
        let mut reached = vec![false; s.h];
        for p in phases.iter().filter(|_| paired) {
            for u in p.in_rows.clone() {
                reached[p.a + sh * u - ph] = true;
            }
        }
        let unreached = (0..s.h).filter(|ih| !reached[*ih]).collect();
        Some(PhasedDx {
            s: *s,
            planes,
            phases,
            paired,
            unreached,
        })
    }

    /// One sample's input gradient into `dx` (`[c_in, h, w]`, written in full): each
    /// phase's correlation written into its rows and columns, and zeros where no window
    /// reaches (with `paired`, only the rows in `unreached`; else the whole of `dx` is zeroed
    /// first).
    fn sample(
        &self,
        dy: &[f32],
        dx: &mut [MaybeUninit<f32>],
        padded: &mut Padded,
        wide: &mut Vec<f32>,
    ) {
        let Conv2dShape {
            c_in,
            h,
            w,
            stride: [sh, sw],
            pad: [ph, _],
            ..
        } = self.s;
        let wq = self.planes.wp();
        let plane = self.planes.build(dy, padded);
        // The correlation of phase `p` into `out` (`c_in` rows `ld` apart).
        let correlate = |p: &DxPhase, out: &mut [f32], ld: usize| {
            direct::conv(
                &plane,
                &p.direct.offsets,
                &p.direct.packed,
                out,
                p.rows * wq,
                ld,
            );
        };
        if self.paired {
            for dxc in dx.chunks_exact_mut(h * w) {
                for ih in &self.unreached {
                    dxc[ih * w..(ih + 1) * w].fill(MaybeUninit::new(0.0));
                }
            }
            for pair in self.phases.chunks_exact(2) {
                let ld = direct::padded_len(pair[0].rows * wq);
                let (first, second) = buf(wide, 2 * c_in * ld).split_at_mut(c_in * ld);
                correlate(&pair[0], first, ld);
                correlate(&pair[1], second, ld);
                let ((e, even), (o, odd)) = if pair[0].iw0 == 0 {
                    ((&pair[0], &*first), (&pair[1], &*second))
                } else {
                    ((&pair[1], &*second), (&pair[0], &*first))
                };
                vectorized(
                    #[inline(always)]
                    || {
                        let outs = even.chunks_exact(ld).zip(odd.chunks_exact(ld));
                        for (dxc, (even, odd)) in dx.chunks_exact_mut(h * w).zip(outs) {
                            for u in e.in_rows.clone() {
                                let ih = e.a + sh * u - ph;
                                interleave(
                                    &even[u * wq + e.v0..][..e.count],
                                    &odd[u * wq + o.v0..][..o.count],
                                    &mut dxc[ih * w..(ih + 1) * w],
                                );
                            }
                        }
                    },
                );
            }
        } else {
            let dx = buffer::zero_init(dx);
            for p in self.phases.iter().filter(|p| p.count > 0) {
                let ld = direct::padded_len(p.rows * wq);
                let out = buf(wide, c_in * ld);
                correlate(p, out, ld);
                let (v0, iw0, count) = (p.v0, p.iw0, p.count);
                vectorized(
                    #[inline(always)]
                    || {
                        for (dxc, out) in dx.chunks_exact_mut(h * w).zip(out.chunks_exact(ld)) {
                            for u in p.in_rows.clone() {
                                let ih = p.a + sh * u - ph;
                                let dst = &mut dxc[ih * w + iw0..(ih + 1) * w];
                                let src = &out[u * wq + v0..][..count];
                                if sw == 2 {
                                    scatter_even(src, dst);
                                } else {
                                    for (k, v) in src.iter().enumerate() {
                                        dst[k * sw] = *v;
                                    }
                                }
                            }
                        }
                    },
                );
            }
        }
        self.planes.give_back(plane, padded);
    }
}

/// Operands of [`direct::conv`] for one layer call, shared by all its samples.
struct Direct {
    packed: Vec<f32>,
    offsets: Vec<usize>,
}

/// A forward convolution's [`Direct`] operands and where its outputs lie on the kernel's
/// wide grid: the kernel writes them (through the output map) straight into the dense
/// output ([`direct::conv_dense`]), so no compaction pass follows (it was 6-7% of a
/// ResNet-20 training step).
struct DenseDirect {
    direct: Direct,
    dense: direct::Dense,
}

impl DenseDirect {
    /// One sample's convolution of its padded (or phase) planes `x` into `y`.
    fn conv(&self, x: &[f32], map: &OutputMap, y: &mut [MaybeUninit<f32>]) {
        let Direct { packed, offsets } = &self.direct;
        direct::conv_dense(x, offsets, packed, y, &self.dense, map);
    }
}

/// Weight-gradient values per task when summing the chunks' partials.
const SUM_BLOCK: usize = 1 << 12;

/// Output channels below which the padded-width weight gradient runs as one stacked GEMM
/// ([`Stride1::weight_grad_stacked`]): measured 13% faster for 16 channels, no faster
/// for 32 and 64 (where `gemm`'s m already fills its wider kernels).
const STACK_BELOW: usize = 32;

impl Stride1 {
    /// [`Stride1::weight_grad_sample`] as one GEMM for all kernel columns: with the output
    /// gradient shifted right by `j` (`dys[(j, co), q] = dy_wide[co, q - j]`),
    /// `dW[co, (ci, i), j] = sum_q dys[(j, co), q] * copies[(ci, i), q]`, so m is
    /// `kw * c_out` (48 rows for 16 channels instead of `gemm`'s one-vector kernel on 16)
    /// and the row copies are packed once instead of `kw` times.
    fn weight_grad_stacked(
        &self,
        x: &[f32],
        dy: &[f32],
        dw_t: &mut [f32],
        first: bool,
        padded: &mut Padded,
    ) {
        // A [`Padded`] buffer: zero before each shifted row and in the junk columns.
        let key = [
            self.c_out, self.ho, self.wo, self.wp, self.kw, 0, 0, 0, 0, 7,
        ];
        let mut dys = std::mem::take(padded.get_vec(key, self.kw * self.c_out * self.r));
        for (row, dst) in dys.chunks_exact_mut(self.r).enumerate() {
            let (j, co) = (row / self.c_out, row % self.c_out);
            let src = &dy[co * self.ho * self.wo..][..self.ho * self.wo];
            for (dst, src) in dst[j..].chunks_mut(self.wp).zip(src.chunks_exact(self.wo)) {
                copy_short(&mut dst[..self.wo], src);
            }
        }
        let copies = self.row_copies(x, padded);
        gemm(
            self.kw * self.c_out,
            self.rows(),
            self.r,
            dw_t,
            Out {
                rs: 1,
                cs: self.kw * self.c_out,
            },
            View::rows(&dys, self.r),
            View::transposed(copies, self.r),
            !first,
        );
        *padded.get_vec(key, 0) = dys;
    }
}

/// `W'[ci, co, i, j] = W[co, ci, kh-1-i, kw-1-j]`: the kernel of the transposed
/// convolution that gives the input gradient.
fn flip_kernel(s: &Conv2dShape, weight: &[f32]) -> Vec<f32> {
    let (kh, kw) = (s.kh, s.kw);
    let mut out = vec![0.0f32; weight.len()];
    for co in 0..s.c_out {
        for ci in 0..s.c_in {
            for i in 0..kh {
                for j in 0..kw {
                    out[((ci * s.c_out + co) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)] =
                        weight[((co * s.c_in + ci) * kh + i) * kw + j];
                }
            }
        }
    }
    out
}

/// Forward convolution: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`,
/// optional `bias` `[c_out]`; returns `[batch, c_out, ho, wo]`.
pub fn forward(s: &Conv2dShape, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_with(s, x, weight, &OutputMap::bias(bias), Kernel::Best)
}

/// [`forward`] with `map` applied to every output value as it is written (no bias: a bias
/// is `map.shift`).
pub fn forward_mapped(s: &Conv2dShape, x: &[f32], weight: &[f32], map: &OutputMap) -> Vec<f32> {
    forward_with(s, x, weight, map, Kernel::Best)
}

/// One sample's forward pass: input, output (uninitialised; the function writes every
/// element), the output map for this sample, this thread's scratch buffers.
type SampleFn<'a> = dyn Fn(&[f32], &mut [MaybeUninit<f32>], &OutputMap, &mut Scratch) + Sync + 'a;

/// Which inner kernels the convolution may use: tests run both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    /// The direct kernel (stride-1 padded-width and strided phase-plane forward, stride-1
    /// and stride-phase input gradients), the weight-gradient kernel and the stacked weight
    /// gradient, where they apply.
    Best,
    /// The plain `gemm` paths: im2col, or one GEMM per kernel column.
    #[cfg_attr(not(test), allow(dead_code))]
    Gemm,
}

fn forward_with(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    map: &OutputMap,
    kernel: Kernel,
) -> Vec<f32> {
    let d = s.dims();
    assert_eq!(x.len(), s.input_len(), "conv2d: input length");
    assert_eq!(weight.len(), s.weight_len(), "conv2d: weight length");
    map.check("conv2d", s.c_out, s.output_len());
    let y_len = s.c_out * d.l;
    if y_len == 0 || d.x_len == 0 {
        // No taps (an empty input) means zero sums: the map still applies.
        let mut y = buffer::uninit(s.output_len());
        if y_len > 0 {
            let zeros = vec![0.0; y_len];
            for (n, yn) in y.chunks_exact_mut(y_len).enumerate() {
                compact(&zeros, d.l, d.l, [1, d.l], &map.sample(n, y_len), yn);
            }
        }
        // SAFETY: `compact` wrote every element (none when y_len is 0).
        return unsafe { buffer::assume_init(y) };
    }
    // Every sample's task writes its whole output (see `SampleFn`), so no zeroing pass.
    let mut y = buffer::uninit(s.output_len());
    // One task per sample, with this thread's scratch buffers (taken and given back per
    // sample, so they outlive this call).
    let mut per_sample = |f: &SampleFn| {
        y.par_chunks_mut(y_len)
            .zip(x.par_chunks(d.x_len))
            .enumerate()
            .for_each(|(n, (yn, xn))| {
                let mut scratch = Scratch::take();
                f(xn, yn, &map.sample(n, y_len), &mut scratch);
                scratch.give_back();
            })
    };
    if let Some(g) = ChanTiles::of(s).filter(|_| kernel == Kernel::Best) {
        let packed = chanvec::pack(weight, s.c_out, d.k);
        per_sample(&|xn, yn, map, scratch| {
            g.forward_sample(xn, &packed, map, yn, &mut scratch.padded);
        });
    } else if let Some(g) = Stride1::of(s) {
        let direct = g.direct(weight).filter(|_| kernel == Kernel::Best);
        per_sample(&|xn, yn, map, scratch| {
            let Scratch { padded, wide, .. } = scratch;
            g.forward_sample(xn, weight, map, yn, padded, wide, direct.as_ref());
        });
    } else if let Some(g) = Phased::of(s).filter(|_| kernel == Kernel::Best) {
        let direct = g.direct(weight);
        per_sample(&|xn, yn, map, scratch| {
            g.forward_sample(xn, &direct, map, yn, &mut scratch.padded);
        });
    } else {
        let segs = d.segments();
        per_sample(&|xn, yn, map, scratch| {
            let Scratch { padded, wide, .. } = scratch;
            let cols = cols_of(&d, &segs, xn, padded);
            let product = |out: &mut [f32]| {
                gemm(
                    s.c_out,
                    d.l,
                    d.k,
                    out,
                    Out::rows(d.l),
                    View::rows(weight, d.k),
                    View::rows(cols, d.l),
                    false,
                )
            };
            // Straight into the output, or into scratch and then mapped into it.
            if map.is_identity() {
                product(buffer::zero_init(yn));
            } else {
                let out = buf(wide, y_len);
                product(out);
                compact(out, d.l, d.l, [1, d.l], map, yn);
            }
        });
    }
    // SAFETY: each sample's task wrote its whole output slice: `compact` writes every
    // element, and the GEMM path without a map zero-initialises its slice first.
    unsafe { buffer::assume_init(y) }
}

/// Which gradients [`backward`] should compute.
#[derive(Clone, Copy, Debug)]
pub struct Wants {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// Gradients of the convolution, each present when asked for.
#[derive(Debug, Default)]
pub struct Grads {
    pub x: Option<Vec<f32>>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

/// Gradients w.r.t. input, weight and bias given the output gradient `dy`
/// (`[batch, c_out, ho, wo]`). Input and weight gradients share one pass over the batch.
pub fn backward(s: &Conv2dShape, x: &[f32], weight: &[f32], dy: &[f32], wants: Wants) -> Grads {
    backward_with(s, x, weight, dy, wants, None, Kernel::Best)
}

/// [`backward`] with `dx_add` (shaped like `x`) added to the input gradient, each sample
/// in the task that wrote it, while it is in cache: `dx[i] + dx_add[i]`, the value (and
/// bits) of adding the two afterwards. For an input with a second consumer, whose gradient
/// Burn would otherwise add in a serial pass (a ResNet block's input: ~2% of a ResNet-20
/// training step, with the pool idle).
pub fn backward_adding(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    wants: Wants,
    dx_add: Option<&[f32]>,
) -> Grads {
    backward_with(s, x, weight, dy, wants, dx_add, Kernel::Best)
}

fn backward_with(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    wants: Wants,
    dx_add: Option<&[f32]>,
    kernel: Kernel,
) -> Grads {
    let d = s.dims();
    assert_eq!(x.len(), s.input_len(), "conv2d backward: input length");
    if let Some(a) = dx_add {
        assert_eq!(a.len(), x.len(), "conv2d backward: dx_add length");
    }
    let dx_add = dx_add.filter(|_| wants.x);
    assert_eq!(
        weight.len(),
        s.weight_len(),
        "conv2d backward: weight length"
    );
    assert_eq!(
        dy.len(),
        s.output_len(),
        "conv2d backward: output-gradient length"
    );
    let y_len = s.c_out * d.l;
    let w_len = s.weight_len();
    let chunks = s.batch.div_ceil(CHUNK);
    let segs = d.segments();

    // Each chunk's task writes its samples' whole input gradient: the transposed
    // convolution's `compact` writes every element, the col2im path zeroes first.
    let mut dx = if wants.x {
        buffer::uninit(x.len())
    } else {
        Vec::new()
    };
    // Every chunk's first sample overwrites its partial in full (the kernels' `first`), so
    // this thread's partials from an earlier call serve without zeroing.
    let mut kept = if wants.weight {
        take_partials(chunks * w_len)
    } else {
        Vec::new()
    };
    let partials = &mut kept[..if wants.weight { chunks * w_len } else { 0 }];

    let stride1 = Stride1::of(s);
    // The input gradient of a stride-1 convolution is a stride-1 convolution of `dy` (on the
    // padded-width path itself when it has enough channels, else through im2col's adjoint).
    let flipped = stride1
        .filter(|_| wants.x)
        .and_then(|g| Some((Stride1::of(&g.transposed())?, flip_kernel(s, weight))));
    let transposed = flipped.as_ref().map(|(t, w)| (*t, &w[..]));
    let stacked = kernel == Kernel::Best && s.c_out < STACK_BELOW;
    let direct_wgrad = WeightGrad::of(s).filter(|_| wants.weight && kernel == Kernel::Best);
    let transposed_direct = transposed
        .and_then(|(t, w)| t.direct(w))
        .filter(|_| kernel == Kernel::Best);
    // The same convolution on the channels-in-vector kernel where it takes the shape.
    let transposed_chan = stride1
        .filter(|_| kernel == Kernel::Best)
        .and_then(|g| ChanTiles::of(&g.transposed()))
        .zip(transposed)
        .map(|(g, (_, w_t))| (g, chanvec::pack(w_t, s.c_in, w_t.len() / s.c_in)));
    let phased_dx = (wants.x && kernel == Kernel::Best)
        .then(|| PhasedDx::of(s, weight))
        .flatten();

    // One chunk of samples: weight-gradient partial into `dw`, input gradient into `dxc`.
    let run_chunk = |c: usize, mut dxc: Option<&mut [MaybeUninit<f32>]>, dw: Option<&mut [f32]>| {
        let pointwise = d.is_pointwise();
        let mut scratch = Scratch::take();
        let Scratch {
            dcols,
            phases,
            dy_t,
            wide,
            padded,
        } = &mut scratch;
        let mut dw = dw;
        let first = c * CHUNK;
        let last = (first + CHUNK).min(s.batch);
        for n in first..last {
            let xn = &x[n * d.x_len..(n + 1) * d.x_len];
            let dyn_ = &dy[n * y_len..(n + 1) * y_len];
            let mut dxn = dxc
                .as_deref_mut()
                .map(|dxc| &mut dxc[(n - first) * d.x_len..(n - first + 1) * d.x_len]);
            if let (Some(dw), Some(g)) = (dw.as_deref_mut(), &direct_wgrad) {
                g.sample(xn, dyn_, dw, n == first, padded, dy_t);
            } else if let (Some(dw), Some(g)) = (dw.as_deref_mut(), &stride1) {
                g.weight_grad_sample(xn, dyn_, dw, n == first, padded, stacked);
            } else if let Some(dw) = dw.as_deref_mut() {
                let cols_n = cols_of(&d, &segs, xn, padded);
                // dW[c_out, k] += dY_n[c_out, l] @ cols_n^T[l, k], stored transposed: then
                // gemm packs the small dY_n instead of the whole im2col matrix.
                gemm(
                    s.c_out,
                    d.k,
                    d.l,
                    dw,
                    Out::cols(s.c_out),
                    View::rows(dyn_, d.l),
                    View::transposed(cols_n, d.l),
                    n > first,
                );
            }
            if let (Some(dxn), Some((g, packed))) = (dxn.as_deref_mut(), &transposed_chan) {
                g.forward_sample(dyn_, packed, &OutputMap::default(), dxn, padded);
            } else if let (Some(dxn), Some((t, w_t))) = (dxn.as_deref_mut(), &transposed) {
                t.forward_sample(
                    dyn_,
                    w_t,
                    &OutputMap::default(),
                    dxn,
                    padded,
                    wide,
                    transposed_direct.as_ref(),
                );
            } else if let (Some(dxn), Some(p)) = (dxn.as_deref_mut(), &phased_dx) {
                p.sample(dyn_, dxn, padded, wide);
            } else if let Some(dxn) = dxn.as_deref_mut() {
                let dxn = buffer::zero_init(dxn);
                // dcols[k, l] = W^T[k, c_out] @ dY_n[c_out, l]
                let target: &mut [f32] = if pointwise {
                    dxn
                } else {
                    buf(dcols, d.k * d.l)
                };
                gemm(
                    d.k,
                    d.l,
                    s.c_out,
                    target,
                    Out::rows(d.l),
                    View::transposed(weight, d.k),
                    View::rows(dyn_, d.l),
                    false,
                );
                if !pointwise {
                    col2im_add(&d, &segs, &dcols[..d.k * d.l], dxn, phases);
                }
            }
            if let (Some(dxn), Some(add)) = (dxn, dx_add) {
                // SAFETY: every path above wrote the sample's whole input gradient.
                let dxn = unsafe { buffer::assume_init_mut(dxn) };
                let add = &add[n * d.x_len..(n + 1) * d.x_len];
                vectorized(
                    #[inline(always)]
                    || dxn.iter_mut().zip(add).for_each(|(g, a)| *g += a),
                );
            }
        }
        scratch.give_back();
    };

    let x_chunk = CHUNK * d.x_len;
    if y_len > 0 && d.x_len > 0 {
        match (wants.x, wants.weight) {
            (true, true) => dx
                .par_chunks_mut(x_chunk)
                .zip(partials.par_chunks_mut(w_len))
                .enumerate()
                .for_each(|(c, (dxc, dw))| run_chunk(c, Some(dxc), Some(dw))),
            (true, false) => dx
                .par_chunks_mut(x_chunk)
                .enumerate()
                .for_each(|(c, dxc)| run_chunk(c, Some(dxc), None)),
            (false, true) => partials
                .par_chunks_mut(w_len)
                .enumerate()
                .for_each(|(c, dw)| run_chunk(c, None, Some(dw))),
            (false, false) => {}
        }
    } else {
        partials.fill(0.0);
    }
    let partials = &*partials;

    let weight_grad = wants.weight.then(|| {
        // Partials hold dW^T ([k, c_out]); sum them in chunk order, in parallel over the
        // elements (a pass over every chunk's partial, which ran on the calling thread while
        // the pool waited), then transpose.
        let mut dw_t = vec![0.0f32; w_len];
        dw_t.par_chunks_mut(SUM_BLOCK)
            .enumerate()
            .for_each(|(b, out)| {
                for part in partials.chunks_exact(w_len) {
                    let part = &part[b * SUM_BLOCK..][..out.len()];
                    out.iter_mut().zip(part).for_each(|(a, b)| *a += b);
                }
            });
        let mut dw = vec![0.0f32; w_len];
        for (kk, row) in dw_t.chunks_exact(s.c_out).enumerate() {
            for (co, v) in row.iter().enumerate() {
                dw[co * d.k + kk] = *v;
            }
        }
        dw
    });
    if wants.weight {
        give_back_partials(kept);
    }
    let bias_grad = wants.bias.then(|| {
        let mut db = vec![0.0f32; s.c_out];
        if d.l > 0 {
            for dyn_ in dy.chunks_exact(y_len) {
                for (b, plane) in db.iter_mut().zip(dyn_.chunks_exact(d.l)) {
                    *b += plane.iter().sum::<f32>();
                }
            }
        }
        db
    });
    let dx = if y_len > 0 && d.x_len > 0 {
        // SAFETY: the chunks' tasks ran and each wrote its samples' whole input gradient
        // (see `dx` above).
        unsafe { buffer::assume_init(dx) }
    } else {
        dx_add.map_or_else(|| vec![0.0; dx.len()], <[f32]>::to_vec)
    };
    Grads {
        x: wants.x.then_some(dx),
        weight: weight_grad,
        bias: bias_grad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of the convolution, in f64.
    fn naive_forward(s: &Conv2dShape, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f64> {
        let [ho, wo] = s.out_hw().unwrap();
        let mut y = vec![0.0f64; s.output_len()];
        for n in 0..s.batch {
            for co in 0..s.c_out {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut acc = b.map_or(0.0, |b| b[co] as f64);
                        for ci in 0..s.c_in {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let ih = (oh * s.stride[0] + i) as isize - s.pad[0] as isize;
                                    let iw = (ow * s.stride[1] + j) as isize - s.pad[1] as isize;
                                    if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * s.c_in + ci) * s.h + ih as usize) * s.w
                                        + iw as usize];
                                    let wv = w[((co * s.c_in + ci) * s.kh + i) * s.kw + j];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((n * s.c_out + co) * ho + oh) * wo + ow] = acc;
                    }
                }
            }
        }
        y
    }

    /// Gradients by the same definition: dL/dx, dL/dw, dL/db for L = sum(y * dy).
    fn naive_backward(s: &Conv2dShape, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let [ho, wo] = s.out_hw().unwrap();
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; s.c_out];
        for n in 0..s.batch {
            for co in 0..s.c_out {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let g = dy[((n * s.c_out + co) * ho + oh) * wo + ow] as f64;
                        db[co] += g;
                        for ci in 0..s.c_in {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let ih = (oh * s.stride[0] + i) as isize - s.pad[0] as isize;
                                    let iw = (ow * s.stride[1] + j) as isize - s.pad[1] as isize;
                                    if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((n * s.c_in + ci) * s.h + ih as usize) * s.w + iw as usize;
                                    let wi = ((co * s.c_in + ci) * s.kh + i) * s.kw + j;
                                    dx[xi] += g * w[wi] as f64;
                                    dw[wi] += g * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        [dx, dw, db]
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (idx, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-4 * (1.0 + w.abs());
            assert!(
                (*g as f64 - w).abs() <= tol,
                "{what}[{idx}]: got {g}, want {w}"
            );
        }
    }

    fn shapes() -> Vec<Conv2dShape> {
        let s =
            |batch, c_in, h, w, c_out, kh, kw, stride: [usize; 2], pad: [usize; 2]| Conv2dShape {
                batch,
                c_in,
                h,
                w,
                c_out,
                kh,
                kw,
                stride,
                pad,
            };
        vec![
            s(3, 2, 7, 6, 4, 3, 3, [1, 1], [1, 1]), // the models' 3x3 "same" conv
            s(5, 3, 8, 8, 2, 3, 3, [2, 2], [1, 1]), // stride 2, batch not a multiple of CHUNK
            s(2, 4, 6, 5, 3, 1, 1, [2, 2], [0, 0]), // ResNet projection shortcut
            s(6, 3, 5, 5, 4, 1, 1, [1, 1], [0, 0]), // pointwise fast path
            s(2, 2, 5, 9, 3, 3, 2, [1, 3], [0, 2]), // asymmetric kernel, stride and padding
            s(1, 1, 4, 4, 1, 5, 5, [1, 1], [2, 2]), // kernel as large as the padded image
            s(9, 2, 3, 3, 2, 3, 3, [2, 1], [1, 0]),
            s(2, 3, 5, 4, 2, 3, 2, [1, 1], [0, 1]), // stride 1, no / uneven padding
            s(3, 5, 6, 7, 3, 2, 4, [1, 1], [1, 3]), // stride 1, padding of kernel size - 1
            s(2, 2, 4, 3, 3, 1, 1, [1, 1], [1, 1]), // padding as large as the kernel
            // Enough input channels for the padded-width path:
            s(3, 12, 6, 5, 4, 3, 3, [1, 1], [1, 1]), // the models' 3x3 "same" conv
            s(2, 16, 5, 4, 3, 3, 2, [1, 1], [0, 1]), // no / uneven padding
            s(3, 8, 6, 7, 2, 4, 4, [1, 1], [1, 3]),  // padding of kernel size - 1
            s(2, 11, 3, 3, 2, 3, 3, [1, 1], [2, 2]), // padding of kernel size: im2col
            // ... and enough output channels for the input gradient's padded-width path:
            s(2, 12, 5, 6, 12, 3, 3, [1, 1], [1, 1]),
            s(3, 11, 4, 5, 16, 3, 2, [1, 1], [0, 1]),
            // Whole panels of output channels for the direct kernel (forward and input
            // gradient), with 81, 40, 14 and 30 wide positions (its three tile widths):
            s(3, 16, 9, 7, 16, 3, 3, [1, 1], [1, 1]),
            s(2, 24, 5, 6, 16, 3, 3, [1, 1], [1, 1]),
            s(2, 12, 2, 5, 16, 3, 3, [1, 1], [1, 1]),
            s(2, 16, 6, 5, 16, 3, 2, [1, 1], [0, 1]),
            // Strided, with as many channels as the models' downsampling layers:
            s(3, 12, 7, 8, 4, 3, 3, [2, 2], [1, 1]), // the models' downsampling conv, odd h
            s(2, 32, 5, 6, 3, 1, 1, [2, 2], [0, 0]), // ResNet projection shortcut
            s(2, 11, 8, 7, 2, 3, 2, [2, 3], [1, 1]), // different strides per axis
            // Strided with whole panels of output channels: the direct kernel on phase planes.
            s(3, 12, 7, 8, 16, 3, 3, [2, 2], [1, 1]), // downsampling conv, odd h
            s(2, 16, 8, 6, 8, 1, 1, [2, 2], [0, 0]),  // projection shortcut (im2col)
            s(2, 3, 9, 11, 8, 3, 2, [2, 3], [1, 1]),  // other strides, asymmetric kernel
            s(2, 4, 7, 7, 8, 3, 3, [2, 2], [0, 0]),   // no padding
            s(1, 2, 6, 5, 16, 3, 3, [3, 2], [2, 1]),  // padding of kernel size - 1
            // Strided with whole panels of input channels: the input gradient as stride
            // phases on the direct kernel (odd sizes, other strides, no padding (rows no
            // window reaches), padding as large as the kernel, a 5x5 kernel).
            s(2, 16, 7, 8, 8, 3, 3, [2, 2], [1, 1]),
            s(2, 8, 9, 7, 4, 3, 2, [2, 3], [1, 1]),
            s(1, 8, 8, 7, 3, 3, 3, [3, 2], [2, 1]),
            s(2, 8, 8, 8, 4, 3, 3, [2, 2], [0, 0]),
            s(1, 8, 4, 4, 2, 2, 2, [2, 2], [2, 2]),
            s(1, 8, 9, 9, 2, 5, 5, [2, 2], [2, 2]),
            s(2, 8, 8, 7, 4, 3, 3, [2, 2], [0, 0]), // paired phases, a row no window reaches
            // Stride 1 with few input channels (an RGB or grey input layer): one phase plane.
            s(2, 3, 8, 7, 8, 3, 3, [1, 1], [1, 1]),
            s(3, 1, 9, 6, 8, 3, 3, [1, 1], [1, 1]),
            s(2, 3, 5, 6, 16, 3, 2, [1, 1], [0, 1]),
            // Whole vectors of output channels for the weight-gradient kernel: its three
            // tile heights (16, 32 and 64 channels), strided, pointwise-strided, and an
            // odd count of tap rows (the last row block partly filled).
            s(2, 5, 6, 5, 32, 3, 3, [1, 1], [1, 1]),
            s(2, 4, 7, 6, 64, 3, 3, [2, 2], [1, 1]),
            s(3, 6, 7, 7, 32, 1, 1, [2, 2], [0, 0]),
            s(2, 7, 5, 4, 64, 1, 1, [2, 1], [0, 0]),
            s(2, 3, 6, 6, 48, 3, 3, [1, 1], [1, 1]),
            s(2, 3, 5, 5, 16, 1, 3, [1, 1], [2, 1]), // row padding larger than the kernel
            // Strided with many taps and whole blocks of output channels: the
            // channels-in-vector kernel (odd input, other strides, no padding, 5x5, and two
            // tiles per output row).
            s(2, 16, 16, 16, 32, 3, 3, [2, 2], [1, 1]),
            s(1, 16, 15, 16, 64, 3, 3, [2, 2], [1, 1]),
            s(1, 16, 9, 22, 32, 3, 3, [2, 3], [1, 1]),
            s(1, 16, 17, 17, 32, 3, 3, [2, 2], [0, 0]),
            s(1, 8, 16, 16, 32, 5, 5, [2, 2], [2, 2]),
            s(1, 16, 32, 32, 32, 3, 3, [2, 2], [1, 1]),
            // ... and stride 1 with 8-wide output rows (forward; the second and third also
            // their input gradient, whose input channels fill the blocks).
            s(2, 16, 8, 8, 32, 3, 3, [1, 1], [1, 1]),
            s(2, 32, 8, 8, 32, 3, 3, [1, 1], [1, 1]),
            s(1, 32, 5, 8, 64, 3, 3, [1, 1], [1, 1]),
        ]
    }

    #[test]
    fn test_shapes_cover_both_paths() {
        let wide = shapes().iter().filter(|s| Stride1::of(s).is_some()).count();
        assert!(wide >= 5, "padded-width shapes: {wide}");
        assert!(shapes().len() - wide >= 8);
        let wide_dx = shapes()
            .iter()
            .filter_map(Stride1::of)
            .filter(|g| Stride1::of(&g.transposed()).is_some())
            .count();
        assert!(wide_dx >= 2, "padded-width input gradients: {wide_dx}");
        assert!(wide - wide_dx >= 2);
        // Shapes for the direct kernel, forward and (transposed) input gradient, and some
        // that it does not take (channels not a multiple of its panel).
        let panels = |g: &Stride1| g.c_out.is_multiple_of(direct::NR);
        let wide_shapes: Vec<Stride1> = shapes().iter().filter_map(Stride1::of).collect();
        let direct_fwd = wide_shapes.iter().filter(|g| panels(g)).count();
        let direct_dx = wide_shapes
            .iter()
            .filter_map(|g| Stride1::of(&g.transposed()))
            .filter(panels)
            .count();
        assert!(direct_fwd >= 5, "direct forward shapes: {direct_fwd}");
        assert!(wide_shapes.len() - direct_fwd >= 3);
        assert!(direct_dx >= 3, "direct input-gradient shapes: {direct_dx}");
        let strided = shapes().iter().filter(|s| s.stride != [1, 1]).count();
        let phased = shapes()
            .iter()
            .filter(|s| s.stride != [1, 1])
            .filter_map(Phased::of)
            .count();
        let phased_stride1 = shapes()
            .iter()
            .filter(|s| s.stride == [1, 1])
            .filter_map(Phased::of)
            .count();
        let chan_tiles = shapes().iter().filter_map(ChanTiles::of).count();
        // The weight-gradient kernel's tile heights (one, two and four vectors of
        // channels) and kernel widths.
        let wgrad: Vec<Conv2dShape> = shapes()
            .into_iter()
            .filter(|s| WeightGrad::of(s).is_some())
            .collect();
        if direct::available() {
            for (c_out, kw) in [(16, 3), (32, 3), (64, 3), (48, 3), (32, 1), (64, 1)] {
                assert!(
                    wgrad.iter().any(|s| s.c_out == c_out && s.kw == kw),
                    "weight-gradient kernel: no shape with {c_out} channels, kw {kw}"
                );
            }
            assert!(wgrad.iter().filter(|s| s.stride != [1, 1]).count() >= 3);
            assert!(wgrad.iter().any(|s| s.pad[0] >= s.kh));
            let phased_dx: Vec<bool> = shapes()
                .iter()
                .filter_map(|s| PhasedDx::of(s, &vec![0.0; s.weight_len()]))
                .map(|p| p.paired)
                .collect();
            assert!(
                phased_dx.len() >= 6,
                "phased input-gradient shapes: {}",
                phased_dx.len()
            );
            // Both ways of writing the phases back: interleaved pairs and single scatters.
            let paired = phased_dx.iter().filter(|p| **p).count();
            assert!(
                paired >= 2 && phased_dx.len() - paired >= 3,
                "paired phases: {paired} of {}",
                phased_dx.len()
            );
            assert!(chan_tiles >= 9, "channels-in-vector shapes: {chan_tiles}");
            // A grey input layer (one channel, 9 taps) on the direct kernel.
            assert!(shapes()
                .iter()
                .filter(|s| s.stride == [1, 1] && s.c_in * s.kh * s.kw < 16)
                .any(|s| Phased::of(s).is_some()));
            let chan_dx = shapes()
                .iter()
                .filter_map(Stride1::of)
                .filter(|g| ChanTiles::of(&g.transposed()).is_some())
                .count();
            assert!(
                chan_dx >= 2,
                "channels-in-vector input gradients: {chan_dx}"
            );
            assert!(
                phased >= 4 && strided - phased >= 5 && phased_stride1 >= 2,
                "{phased} of {strided}"
            );
        }
    }

    /// The channels-in-vector kernel gives the bits of the direct kernel it replaces on
    /// these shapes, on phase planes or on the padded-width grid (both chain the
    /// multiply-adds in the weight's order), mapped or not.
    #[test]
    fn channels_in_vector_equals_the_direct_kernel() {
        if !chanvec::available() {
            return;
        }
        for s in shapes().iter().filter(|s| ChanTiles::of(s).is_some()) {
            let d = s.dims();
            let x = values(s.input_len(), 5);
            let w = values(s.weight_len(), 3);
            let scale = values(s.c_out, 7);
            let shift = values(s.c_out, 8);
            let residual = values(s.output_len(), 9);
            for map in [
                OutputMap::default(),
                OutputMap {
                    scale: Some(&scale),
                    shift: Some(&shift),
                    epilogue: Epilogue {
                        residual: Some(&residual),
                        relu: true,
                    },
                },
            ] {
                let got = forward_mapped(s, &x, &w, &map);
                let y_len = s.output_len() / s.batch;
                let mut want = vec![MaybeUninit::new(0.0f32); s.output_len()];
                let (mut padded, mut wide) = (Padded::default(), Vec::new());
                for (n, (yn, xn)) in want.chunks_mut(y_len).zip(x.chunks(d.x_len)).enumerate() {
                    let m = map.sample(n, y_len);
                    if let Some(g) = Stride1::of(s) {
                        let direct = g.direct(&w).unwrap();
                        g.forward_sample(xn, &w, &m, yn, &mut padded, &mut wide, Some(&direct));
                    } else {
                        let g = Phased::of(s).unwrap();
                        let direct = g.direct(&w);
                        g.forward_sample(xn, &direct, &m, yn, &mut padded);
                    }
                }
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    // SAFETY: every element was written by the phase-plane path.
                    let b = unsafe { b.assume_init() };
                    assert_eq!(a.to_bits(), b.to_bits(), "{s:?}, element {i}");
                }
            }
        }
    }

    /// Both inner kernels of the padded-width path (the direct one only runs on AVX-512).
    const KERNELS: [Kernel; 2] = [Kernel::Best, Kernel::Gemm];

    #[test]
    fn forward_matches_the_definition() {
        for (t, s) in shapes().iter().enumerate() {
            let x = values(s.input_len(), 1 + t as u32);
            let w = values(s.weight_len(), 100 + t as u32);
            let b = values(s.c_out, 200 + t as u32);
            for kernel in KERNELS {
                assert_close(
                    &format!("{s:?} {kernel:?} y"),
                    &forward_with(s, &x, &w, &OutputMap::default(), kernel),
                    &naive_forward(s, &x, &w, None),
                );
                assert_close(
                    &format!("{s:?} {kernel:?} y+b"),
                    &forward_with(s, &x, &w, &OutputMap::bias(Some(&b)), kernel),
                    &naive_forward(s, &x, &w, Some(&b)),
                );
            }
        }
    }

    /// A scale, shift, residual and ReLU applied as the output is written give, on every
    /// path, the values of the definition followed by those terms.
    #[test]
    fn forward_output_map_matches_the_definition() {
        let mut clamped = 0;
        for (t, s) in shapes().iter().enumerate() {
            let x = values(s.input_len(), 1 + t as u32);
            let w = values(s.weight_len(), 100 + t as u32);
            let scale = values(s.c_out, 300 + t as u32);
            let shift = values(s.c_out, 400 + t as u32);
            let residual = values(s.output_len(), 500 + t as u32);
            let plane = s.out_hw().map_or(0, |[ho, wo]| ho * wo);
            let conv = naive_forward(s, &x, &w, None);
            for (with_residual, relu) in [(false, false), (false, true), (true, true)] {
                let map = OutputMap {
                    scale: Some(&scale),
                    shift: Some(&shift),
                    epilogue: Epilogue {
                        residual: with_residual.then_some(&residual[..]),
                        relu,
                    },
                };
                let want: Vec<f64> = conv
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let c = i / plane % s.c_out;
                        let mut v = v * scale[c] as f64 + shift[c] as f64;
                        if with_residual {
                            v += residual[i] as f64;
                        }
                        if relu {
                            v.max(0.0)
                        } else {
                            v
                        }
                    })
                    .collect();
                for kernel in KERNELS {
                    let what = format!("{s:?} {kernel:?} residual {with_residual} relu {relu}");
                    let got = forward_with(s, &x, &w, &map, kernel);
                    assert_close(&what, &got, &want);
                    if relu {
                        clamped += got.iter().filter(|v| **v == 0.0).count();
                    }
                }
            }
        }
        assert!(clamped > 1000, "the ReLU was exercised ({clamped} zeros)");
    }

    #[test]
    fn backward_matches_the_definition() {
        for (t, s) in shapes().iter().enumerate() {
            let x = values(s.input_len(), 1 + t as u32);
            let w = values(s.weight_len(), 100 + t as u32);
            let dy = values(s.output_len(), 300 + t as u32);
            let [dx, dw, db] = naive_backward(s, &x, &w, &dy);
            let all = Wants {
                x: true,
                weight: true,
                bias: true,
            };
            let gemm = backward_with(s, &x, &w, &dy, all, None, Kernel::Gemm);
            assert_close(&format!("{s:?} gemm dx"), gemm.x.as_deref().unwrap(), &dx);
            assert_close(
                &format!("{s:?} gemm dw"),
                gemm.weight.as_deref().unwrap(),
                &dw,
            );
            let g = backward(s, &x, &w, &dy, all);
            assert_close(&format!("{s:?} dx"), g.x.as_deref().unwrap(), &dx);
            assert_close(&format!("{s:?} dw"), g.weight.as_deref().unwrap(), &dw);
            assert_close(&format!("{s:?} db"), g.bias.as_deref().unwrap(), &db);
            // Each gradient alone is the same as computed together.
            for wants in [
                Wants {
                    x: true,
                    weight: false,
                    bias: false,
                },
                Wants {
                    x: false,
                    weight: true,
                    bias: false,
                },
            ] {
                let one = backward(s, &x, &w, &dy, wants);
                assert_eq!(one.x.is_some(), wants.x);
                assert_eq!(one.weight.is_some(), wants.weight);
                assert!(one.bias.is_none());
                if let Some(v) = one.x {
                    assert_eq!(Some(v), g.x);
                }
                if let Some(v) = one.weight {
                    assert_eq!(Some(v), g.weight);
                }
            }
            // A gradient to add (another consumer's) comes out added, bit for bit as adding
            // it afterwards, on every path; the other gradients are unchanged.
            let add = values(s.input_len(), 500 + t as u32);
            for kernel in [Kernel::Best, Kernel::Gemm] {
                let added = backward_with(s, &x, &w, &dy, all, Some(&add), kernel);
                let base = backward_with(s, &x, &w, &dy, all, None, kernel);
                let want: Vec<f32> = base
                    .x
                    .unwrap()
                    .iter()
                    .zip(&add)
                    .map(|(a, b)| a + b)
                    .collect();
                assert_eq!(added.x.unwrap(), want, "{s:?} {kernel:?} dx + dx_add");
                assert_eq!(added.weight, base.weight, "{s:?} {kernel:?} dw");
                if kernel == Kernel::Best {
                    let public = backward_adding(s, &x, &w, &dy, all, Some(&add));
                    assert_eq!(public.x, Some(want), "{s:?} backward_adding");
                }
            }
            // Without the input gradient, there is nothing to add to.
            let wants = Wants {
                x: false,
                weight: true,
                bias: false,
            };
            assert!(backward_adding(s, &x, &w, &dy, wants, Some(&add))
                .x
                .is_none());
        }
    }

    #[test]
    fn phased_input_gradient_writes_every_element() {
        // `dx` starts as NaN: an element the phases neither write nor zero shows.
        let (mut paired, mut unreached) = (0, 0);
        for (t, s) in shapes().iter().enumerate() {
            let w = values(s.weight_len(), 100 + t as u32);
            let Some(p) = PhasedDx::of(s, &w) else {
                continue;
            };
            paired += usize::from(p.paired);
            unreached += usize::from(p.paired && !p.unreached.is_empty());
            let x = values(s.input_len(), 1 + t as u32);
            let dy = values(s.output_len(), 300 + t as u32);
            let [want, _, _] = naive_backward(s, &x, &w, &dy);
            let (x_len, y_len) = (s.input_len() / s.batch, s.output_len() / s.batch);
            let (mut padded, mut wide) = (Padded::default(), Vec::new());
            for n in 0..s.batch {
                let mut dx = vec![MaybeUninit::new(f32::NAN); x_len];
                p.sample(&dy[n * y_len..][..y_len], &mut dx, &mut padded, &mut wide);
                // SAFETY: initialised as NaN above.
                let dx = unsafe { buffer::assume_init(dx) };
                assert_close(
                    &format!("{s:?} sample {n}"),
                    &dx,
                    &want[n * x_len..][..x_len],
                );
            }
        }
        assert!(
            paired >= 2 && unreached >= 1,
            "{paired} paired, {unreached} with rows unreached"
        );
    }

    #[test]
    fn kept_weight_gradient_partials_are_overwritten() {
        let all = Wants {
            x: true,
            weight: true,
            bias: false,
        };
        for (t, s) in shapes().iter().enumerate() {
            let x = values(s.input_len(), 1 + t as u32);
            let w = values(s.weight_len(), 100 + t as u32);
            let dy = values(s.output_len(), 300 + t as u32);
            for kernel in [Kernel::Best, Kernel::Gemm] {
                // On one thread, so that the poisoned partials are the ones used.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                let (fresh, poisoned) = pool.install(|| {
                    give_back_partials(Vec::new());
                    let fresh = backward_with(s, &x, &w, &dy, all, None, kernel).weight;
                    give_back_partials(vec![
                        f32::NAN;
                        s.batch.div_ceil(CHUNK) * s.weight_len() + 7
                    ]);
                    let poisoned = backward_with(s, &x, &w, &dy, all, None, kernel).weight;
                    (fresh, poisoned)
                });
                assert!(fresh.as_ref().unwrap().iter().all(|v| v.is_finite()));
                assert_eq!(fresh, poisoned, "{s:?} {kernel:?}");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let base = Conv2dShape {
            batch: 13,
            c_in: 12,
            h: 10,
            w: 10,
            c_out: 16,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
        };
        // Padded-width path (direct kernel forward; and for the input gradient), im2col
        // path, strided im2col path (3 and 12 channels).
        let strided = Conv2dShape {
            stride: [2, 2],
            ..base
        };
        for s in [
            base,
            Conv2dShape { c_in: 16, ..base },
            Conv2dShape { c_in: 4, ..base },
            strided,
            Conv2dShape { c_in: 3, ..strided },
        ] {
            let x = values(s.input_len(), 7);
            let w = values(s.weight_len(), 8);
            let dy = values(s.output_len(), 9);
            let all = Wants {
                x: true,
                weight: true,
                bias: true,
            };
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let g = backward(&s, &x, &w, &dy, all);
                    (forward(&s, &x, &w, None), g.x, g.weight, g.bias)
                })
            };
            let one = run(1);
            assert_eq!(one, run(3), "{s:?}");
            assert_eq!(one, run(8), "{s:?}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_reported() {
        let s = Conv2dShape {
            batch: 1,
            c_in: 1,
            h: 2,
            w: 2,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [0, 0],
        };
        assert_eq!(s.out_hw(), None);
        assert_eq!(
            Conv2dShape {
                stride: [0, 1],
                ..s
            }
            .out_hw(),
            None
        );
        assert_eq!(Conv2dShape { pad: [1, 1], ..s }.out_hw(), Some([2, 2]));
    }
}
