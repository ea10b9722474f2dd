//! `QuantizedMatMul(x [tokens, k], weight [n/16, k/4, 16, 4], scale [n], offset [n]) ->
//! [tokens, n]`: `x · W` in int8, for the encoder's four products a layer.
//!
//! - The weight is quantized once, when the graph is built: per output column, symmetric,
//!   `W[k, c] ≈ scale[c] · q[k, c]` with `q` in ±127, and `offset[c] = scale[c] · Σ_k q[k, c]`.
//!   It is stored packed: panels of 16 columns, and within a panel four consecutive `k`
//!   of one column next to each other. A panel's step of four `k` is then one 64-byte
//!   load, the operand VNNI's `vpdpbusd` takes.
//! - Each row of `x` is quantized here, on the fly, with its own scale and zero point:
//!   `x[r, k] ≈ s_r · (u[r, k] − z_r)` with `u` in `0..=top`. So
//!   `(x · W)[r, c] ≈ s_r · (scale[c] · Σ_k u[r, k]·q[k, c] − z_r · offset[c])`, and the
//!   sum is exact integer arithmetic.
//! - Three ways to take the sum, chosen at run time ([`Path`]): AVX-512 VNNI (`vpdpbusd`:
//!   four u8 × s8 products into i32, 64 lanes an instruction), AVX2 (`vpmaddubsw` then
//!   `vpmaddwd`; it saturates a pair of products at ±32,767, so `top` is 127 there and a
//!   pair stays inside), and plain Rust for every other CPU. All three give the same sums.
//!
//! A work item is up to [`ITEM_ROWS`] rows and a range of panels: it quantizes its rows
//! into a buffer of its own, then walks its panels a tile at a time. A tile is up to 8 rows
//! by 3 panels (24 accumulators of the 32 AVX-512 registers), so each weight load serves
//! eight rows, and each row's broadcast three panels. Few rows (short requests) split the
//! columns across items too, so that every thread has work.
//!
//! ONNX Runtime's `DynamicQuantizeMatMul` quantizes the whole tensor with one scale, in a
//! pass of its own before the product: reading `x` twice, and one outlier row coarsens
//! every row. docs/MODELS.md has what this was worth.

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::{input, op_error, output, parallel};

/// Columns of a weight panel.
const PANEL: usize = 16;
/// The largest tile: rows, and panels.
const TILE_ROWS: usize = 8;
const TILE_PANELS: usize = 3;
/// Rows a work item quantizes and multiplies.
const ITEM_ROWS: usize = 32;
/// Work items to aim for when there are few rows.
const MIN_ITEMS: usize = 8;

pub struct QuantizedMatMul;

impl Operator for QuantizedMatMul {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "QuantizedMatMul"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [TensorElementType::Float32, TensorElementType::Int8, TensorElementType::Float32, TensorElementType::Float32]
            .map(OperatorInput::required)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let path = Path::chosen();
        Ok(Box::new(move |ctx: &ComputeContext| {
            let input = |i: usize| input(ctx, "QuantizedMatMul", i);
            let (x, weight, scale, offset) = (input(0)?, input(1)?, input(2)?, input(3)?);
            let (shape, x) = x.try_extract_tensor::<f32>()?;
            let (packed, q) = weight.try_extract_tensor::<i8>()?;
            let (scale, offset) = (scale.try_extract_tensor::<f32>()?.1, offset.try_extract_tensor::<f32>()?.1);
            let weights = Weights::new(packed, q, scale, offset).map_err(|e| op_error(&format!("QuantizedMatMul: {e}")))?;
            if shape.last().copied() != Some(weights.k as i64) {
                return Err(op_error(&format!("QuantizedMatMul: input {shape:?} does not end in k = {}", weights.k)));
            }
            let mut out_shape = shape.to_vec();
            *out_shape.last_mut().expect("checked above") = weights.n as i64;
            let mut out = output(ctx, "QuantizedMatMul", out_shape)?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            multiply(path, x, &weights, out, |items, work| parallel(ctx, items, work).map_err(|e| e.to_string()))
                .map_err(|e| op_error(&format!("QuantizedMatMul: {e}")))
        }))
    }
}

/// A packed, quantized weight (see the module's docs).
pub struct Weights<'a> {
    q: &'a [i8],
    scale: &'a [f32],
    offset: &'a [f32],
    k: usize,
    n: usize,
}

impl<'a> Weights<'a> {
    /// The weight of `packed` shape `[n/16, k/4, 16, 4]`, checked against its parts.
    pub fn new(packed: &[i64], q: &'a [i8], scale: &'a [f32], offset: &'a [f32]) -> Result<Self, String> {
        let [panels, steps, PANEL_I64, 4] = *packed else {
            return Err(format!("weight {packed:?} is not packed as [n/16, k/4, 16, 4]"));
        };
        let (n, k) = (panels.max(0) as usize * PANEL, steps.max(0) as usize * 4);
        if n == 0 || k == 0 || scale.len() != n || offset.len() != n || q.len() != n * k {
            return Err(format!("weight {packed:?}, scale [{}] and offset [{}] do not fit", scale.len(), offset.len()));
        }
        Ok(Self { q, scale, offset, k, n })
    }

    /// `q[i, c]`, from its packed place.
    fn at(&self, i: usize, c: usize) -> i8 {
        self.q[((c / PANEL * (self.k / 4) + i / 4) * PANEL + c % PANEL) * 4 + i % 4]
    }
}

const PANEL_I64: i64 = PANEL as i64;

/// How the integer sums are taken, by what the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Vnni,
    Avx2,
    Portable,
}

impl Path {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |features: &[bool]| features.iter().all(|f| *f);
            if has(&[
                is_x86_feature_detected!("avx2"),
                is_x86_feature_detected!("avx512f"),
                is_x86_feature_detected!("avx512bw"),
                is_x86_feature_detected!("avx512vl"),
                is_x86_feature_detected!("avx512vnni"),
                is_x86_feature_detected!("fma"),
            ]) {
                return Path::Vnni;
            }
            if has(&[is_x86_feature_detected!("avx2"), is_x86_feature_detected!("fma")]) {
                return Path::Avx2;
            }
        }
        Path::Portable
    }

    /// The paths this CPU can run: each runs wherever the one before it does.
    pub fn available() -> impl Iterator<Item = Self> {
        let best = Path::detect();
        [Path::Vnni, Path::Avx2, Path::Portable].into_iter().skip_while(move |p| *p != best)
    }

    /// The path the operator takes: the fastest this CPU runs whose product of a known
    /// pair of operands is right ([`Path::verified`]), found once a process. A path that
    /// goes wrong on some CPU then costs speed, never scores: the VNNI path has passed
    /// its tests only where a CPU of ours had VNNI.
    pub fn chosen() -> Self {
        static CHOSEN: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| first_verified(Path::available(), Path::verified))
    }

    /// Whether this path multiplies a known pair of operands (remainders in its tiles'
    /// rows and panels, columns split across items) to the exact product of their
    /// quantized values. The CPU must run it.
    fn verified(self) -> bool {
        let (rows, k, n) = (11, 64, 80);
        let x = values(rows * k, 1);
        let q: Vec<i8> = (0..k * n).map(|i| ((i * 31 % 255) as i32 - 127) as i8).collect();
        let scale: Vec<f32> = (0..n).map(|c| 0.01 + c as f32 / 1000.0).collect();
        let shape = [(n / PANEL) as i64, (k / 4) as i64, PANEL_I64, 4];
        let unchecked = Weights { q: &q, scale: &scale, offset: &[], k, n };
        let offset: Vec<f32> = (0..n).map(|c| scale[c] * (0..k).map(|i| unchecked.at(i, c) as f32).sum::<f32>()).collect();
        let w = Weights::new(&shape, &q, &scale, &offset).expect("a packed weight");
        let mut got = vec![f32::NAN; rows * n];
        let sequential = |items, work: &(dyn Fn(usize) + Sync)| {
            (0..items).for_each(work);
            Ok(())
        };
        multiply(self, &x, &w, &mut got, sequential).is_ok() && same(&got, &exact(self, &x, &w))
    }

    /// The largest quantized activation: `vpmaddubsw` must not saturate.
    fn top(self) -> f32 {
        if self == Path::Avx2 { 127.0 } else { 255.0 }
    }

    /// The tile shape: rows, panels.
    fn tile(self) -> (usize, usize) {
        match self {
            Path::Vnni => (TILE_ROWS, TILE_PANELS),
            Path::Avx2 => (4, 1),
            Path::Portable => (4, 1),
        }
    }
}

/// The first of `paths` that is `verified`, else the plain one.
fn first_verified(paths: impl Iterator<Item = Path>, verified: impl Fn(Path) -> bool) -> Path {
    for path in paths {
        if verified(path) {
            return path;
        }
        tracing::error!(?path, "int8 products on this path are wrong on this CPU; taking the next path");
    }
    Path::Portable
}

/// The product of `x`'s rows quantized for `path` and `w`, summed one term at a time: what
/// every path must give.
fn exact(path: Path, x: &[f32], w: &Weights) -> Vec<f32> {
    let mut u = vec![0u8; w.k];
    let mut out = Vec::with_capacity(x.len() / w.k * w.n);
    for x in x.chunks_exact(w.k) {
        let (s, z) = quantize_row_plain(x, path.top(), &mut u);
        for c in 0..w.n {
            let sum: i64 = (0..w.k).map(|i| u[i] as i64 * w.at(i, c) as i64).sum();
            out.push(s * (sum as f32 * w.scale[c] - z * w.offset[c]));
        }
    }
    out
}

/// `len` values in ±1, every 97th six times larger (an outlier per row or so), from `seed`.
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + seed) * 7919 % 2003) as f32 / 1001.5 - 1.0) * if (i * 31 + seed).is_multiple_of(97) { 6.0 } else { 1.0 })
        .collect()
}

/// Whether two products agree up to f32 rounding of their final scaling.
fn same(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs()))
}

/// `out = x · W` for `x` of `[rows, k]`; `run(items, work)` runs `work` for `0..items`
/// (on ONNX Runtime's threads, in the operator). Refuses operands that do not fit, and a
/// path this CPU cannot run.
pub fn multiply(
    path: Path,
    x: &[f32],
    w: &Weights,
    out: &mut [f32],
    run: impl FnOnce(usize, &(dyn Fn(usize) + Sync)) -> Result<(), String>,
) -> Result<(), String> {
    let all = x.len() / w.k;
    if x.len() != all * w.k || out.len() != all * w.n {
        return Err(format!("{} inputs and {} outputs do not fit a [{}, {}] weight", x.len(), out.len(), w.k, w.n));
    }
    if !Path::available().any(|p| p == path) {
        return Err(format!("this CPU cannot run the {path:?} path"));
    }
    let (row_items, panels) = (all.div_ceil(ITEM_ROWS), w.n / PANEL);
    let column_items = MIN_ITEMS.div_ceil(row_items.max(1)).min(panels.div_ceil(path.tile().1));
    let panels_per_item = panels.div_ceil(column_items);
    let column_items = panels.div_ceil(panels_per_item);
    let out = super::Shared(out.as_mut_ptr());
    let work = |i: usize| {
        let (ri, ci) = (i / column_items, i % column_items);
        let rows = ri * ITEM_ROWS..all.min((ri + 1) * ITEM_ROWS);
        let panels = ci * panels_per_item..panels.min((ci + 1) * panels_per_item);
        // SAFETY: items cover disjoint rows × columns of `out`.
        unsafe { item(path, &x[rows.start * w.k..rows.end * w.k], w, panels, out.at(rows.start * w.n)) }
    };
    run(row_items * column_items, &work)
}

/// One work item: the rows of `x`, the columns of `panels`, into `out` (the first row's
/// start in the output).
///
/// # Safety
/// `out` must hold `x`'s rows of `w.n` columns, and no one else may touch those columns.
unsafe fn item(path: Path, x: &[f32], w: &Weights, panels: std::ops::Range<usize>, out: *mut f32) {
    let (k, rows) = (w.k, x.len() / w.k);
    let mut u = vec![0u8; rows * k];
    let mut quant = [(0f32, 0f32); ITEM_ROWS];
    for ((x, u), quant) in x.chunks_exact(k).zip(u.chunks_exact_mut(k)).zip(&mut quant) {
        // SAFETY: this CPU runs `path` (the caller's promise).
        *quant = unsafe { quantize_row(path, x, u) };
    }
    let (tile_rows, tile_panels) = path.tile();
    let mut p = panels.start;
    while p < panels.end {
        let np = tile_panels.min(panels.end - p);
        let columns = p * PANEL..(p + np) * PANEL;
        let mut r = 0;
        while r < rows {
            let nr = tile_rows.min(rows - r);
            let tile = Tile {
                u: &u[r * k..(r + nr) * k],
                k,
                q: &w.q[p * PANEL * k..(p + np) * PANEL * k],
                quant: &quant[r..r + nr],
                scale: &w.scale[columns.clone()],
                offset: &w.offset[columns.clone()],
                // SAFETY: inside the item's rows and columns (the caller's promise).
                out: unsafe { out.add(r * w.n + columns.start) },
                stride: w.n,
            };
            // SAFETY: the tile's slices hold `nr` rows and `np` panels; `tiles` picks a
            // function this CPU runs.
            unsafe { tiles(path)[nr - 1][np - 1](&tile) };
            r += nr;
        }
        p += np;
    }
}

/// Quantizes a row for `path` (to `0..=path.top()`) with its own scale and zero point,
/// into `u`; returns `(scale, zero point)`. The range always holds 0, so zero padding
/// stays exact.
///
/// # Safety
/// This CPU must run `path` (one of [`Path::available`]).
unsafe fn quantize_row(path: Path, x: &[f32], u: &mut [u8]) -> (f32, f32) {
    match path {
        // SAFETY: both paths imply AVX2 and FMA (`Path::detect`).
        #[cfg(target_arch = "x86_64")]
        Path::Vnni | Path::Avx2 => unsafe { quantize_row_avx2(x, path.top(), u) },
        _ => quantize_row_plain(x, path.top(), u),
    }
}

/// The scale, zero point and inverse scale for values in `lo..=hi` (with `lo <= 0 <= hi`).
fn range(lo: f32, hi: f32, top: f32) -> (f32, f32, f32) {
    let scale = if hi > lo { (hi - lo) / top } else { 1.0 };
    (scale, (-lo / scale).round_ties_even(), 1.0 / scale)
}

fn quantize_row_plain(x: &[f32], top: f32, u: &mut [u8]) -> (f32, f32) {
    let (lo, hi) = x.iter().fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let (scale, zero, inverse) = range(lo, hi, top);
    for (u, x) in u.iter_mut().zip(x) {
        *u = level(*x, inverse, zero, top);
    }
    (scale, zero)
}

/// `quantize_row` in AVX2: the compiler keeps the range's min and max scalar and
/// narrows to bytes one at a time, five times slower than this.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], top: f32, u: &mut [u8]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let whole = x.len() / 32 * 32;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for x in x[..x.len() / 8 * 8].chunks_exact(8) {
        // SAFETY: eight floats.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr()) };
        (lo, hi) = (_mm256_min_ps(lo, v), _mm256_max_ps(hi, v));
    }
    let (mut los, mut his) = ([0f32; 8], [0f32; 8]);
    // SAFETY: eight floats each.
    unsafe { (_mm256_storeu_ps(los.as_mut_ptr(), lo), _mm256_storeu_ps(his.as_mut_ptr(), hi)) };
    let tail = &x[x.len() / 8 * 8..];
    let lo = los.iter().chain(tail).fold(0f32, |a, b| a.min(*b));
    let hi = his.iter().chain(tail).fold(0f32, |a, b| a.max(*b));
    let (scale, zero, inverse) = range(lo, hi, top);
    let (inverse_v, zero_v, top_v) = (_mm256_set1_ps(inverse), _mm256_set1_ps(zero), _mm256_set1_ps(top));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (x, u) in x[..whole].chunks_exact(32).zip(u.chunks_exact_mut(32)) {
        let mut levels = [_mm256_setzero_si256(); 4];
        for (i, level) in levels.iter_mut().enumerate() {
            // SAFETY: eight of the 32 floats.
            let v = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) }, inverse_v, zero_v);
            // rounds to nearest, ties to even (the default rounding mode)
            *level = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), top_v));
        }
        let bytes = _mm256_packus_epi16(_mm256_packs_epi32(levels[0], levels[1]), _mm256_packs_epi32(levels[2], levels[3]));
        // SAFETY: 32 bytes.
        unsafe { _mm256_storeu_si256(u.as_mut_ptr().cast(), _mm256_permutevar8x32_epi32(bytes, order)) };
    }
    for (u, x) in u[whole..].iter_mut().zip(&x[whole..]) {
        *u = level(*x, inverse, zero, top);
    }
    (scale, zero)
}

/// `x` quantized: `round(x / scale) + zero`, clamped to `0..=top`. Adding 1.5 · 2²³
/// rounds to the nearest integer (ties to even) into the low bits of the mantissa: plain
/// arithmetic, which vectorizes where a float-to-int conversion does not.
#[inline(always)]
fn level(x: f32, inverse: f32, zero: f32, top: f32) -> u8 {
    const ROUND: f32 = 12_582_912.0;
    (x.mul_add(inverse, zero).max(0.0).min(top) + ROUND).to_bits() as u8
}

/// One tile's operands: up to 8 rows of `u` (each `k` long) by up to 3 panels of `q`.
struct Tile<'a> {
    u: &'a [u8],
    k: usize,
    q: &'a [i8],
    quant: &'a [(f32, f32)],
    scale: &'a [f32],
    offset: &'a [f32],
    out: *mut f32,
    stride: usize,
}

type TileFn = unsafe fn(&Tile);

/// The tile functions of a path, by rows − 1 and panels − 1.
fn tiles(path: Path) -> &'static [[TileFn; TILE_PANELS]; TILE_ROWS] {
    macro_rules! table {
        ($f:ident) => {{
            macro_rules! row {
                ($r:literal) => {
                    [$f::<$r, 1> as TileFn, $f::<$r, 2>, $f::<$r, 3>]
                };
            }
            &[row!(1), row!(2), row!(3), row!(4), row!(5), row!(6), row!(7), row!(8)]
        }};
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => table!(vnni),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => table!(avx2),
        _ => table!(portable),
    }
}

/// Writes the tile's integer sums `sums[r][p][c]` out as floats.
///
/// # Safety
/// `t.out` must have room for the tile's rows and columns.
#[inline(always)]
unsafe fn finish<const R: usize, const P: usize>(t: &Tile, sums: &[[[i32; PANEL]; P]; R]) {
    for (r, (sums, (s, z))) in sums.iter().zip(t.quant).enumerate() {
        // SAFETY: row `r` of the tile, `P` panels wide (the caller's promise).
        let out = unsafe { std::slice::from_raw_parts_mut(t.out.add(r * t.stride), P * PANEL) };
        let sums = sums.as_flattened();
        for (((o, sum), scale), offset) in out.iter_mut().zip(sums).zip(t.scale).zip(t.offset) {
            *o = s * (*sum as f32 * scale - z * offset);
        }
    }
}

/// # Safety
/// The CPU must have AVX-512 VNNI; `t` must hold `R` rows and `P` panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma")]
unsafe fn vnni<const R: usize, const P: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    debug_assert!(t.u.len() == R * t.k && t.q.len() == P * PANEL * t.k);
    let (u, q, k) = (t.u.as_ptr(), t.q.as_ptr(), t.k);
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for step in 0..k / 4 {
        let mut w = [_mm512_setzero_si512(); P];
        for (p, w) in w.iter_mut().enumerate() {
            // SAFETY: panel `p`'s step `step`: 64 bytes inside `q`.
            *w = unsafe { _mm512_loadu_si512(q.add(p * PANEL * k + step * 64).cast()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r`'s four bytes at `4 · step`, inside `u`.
            let x = _mm512_set1_epi32(unsafe { u.add(r * k + step * 4).cast::<i32>().read_unaligned() });
            for (acc, w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_dpbusd_epi32(*acc, x, *w);
            }
        }
    }
    // SAFETY: `__m512i` is sixteen i32 lanes.
    let sums: [[[i32; PANEL]; P]; R] = unsafe { std::mem::transmute_copy(&acc) };
    unsafe { finish(t, &sums) }
}

/// # Safety
/// The CPU must have AVX2; `t` must hold `R` rows and `P` panels, and `u` be at most 127.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<const R: usize, const P: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    debug_assert!(t.u.len() == R * t.k && t.q.len() == P * PANEL * t.k);
    let (u, q, k) = (t.u.as_ptr(), t.q.as_ptr(), t.k);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[[_mm256_setzero_si256(); 2]; P]; R];
    for step in 0..k / 4 {
        let mut w = [[_mm256_setzero_si256(); 2]; P];
        for (p, w) in w.iter_mut().enumerate() {
            for (h, w) in w.iter_mut().enumerate() {
                // SAFETY: half `h` of panel `p`'s step `step`, inside `q`.
                *w = unsafe { _mm256_loadu_si256(q.add(p * PANEL * k + step * 64 + h * 32).cast()) };
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r`'s four bytes at `4 · step`, inside `u`.
            let x = _mm256_set1_epi32(unsafe { u.add(r * k + step * 4).cast::<i32>().read_unaligned() });
            for (acc, w) in acc.iter_mut().zip(&w) {
                for (acc, w) in acc.iter_mut().zip(w) {
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, *w), ones));
                }
            }
        }
    }
    // SAFETY: two `__m256i` are sixteen i32 lanes.
    let sums: [[[i32; PANEL]; P]; R] = unsafe { std::mem::transmute_copy(&acc) };
    unsafe { finish(t, &sums) }
}

/// # Safety
/// `t` must hold `R` rows and `P` panels.
unsafe fn portable<const R: usize, const P: usize>(t: &Tile) {
    let mut sums = [[[0i32; PANEL]; P]; R];
    for step in 0..t.k / 4 {
        for (r, sums) in sums.iter_mut().enumerate() {
            let x: &[u8; 4] = t.u[r * t.k + step * 4..][..4].try_into().expect("four bytes");
            for (p, sums) in sums.iter_mut().enumerate() {
                let w: &[i8; 64] = t.q[(p * t.k / 4 + step) * 64..][..64].try_into().expect("a panel step");
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum += x[0] as i32 * w[c * 4] as i32
                        + x[1] as i32 * w[c * 4 + 1] as i32
                        + x[2] as i32 * w[c * 4 + 2] as i32
                        + x[3] as i32 * w[c * 4 + 3] as i32;
                }
            }
        }
    }
    unsafe { finish(t, &sums) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight packed as the build script packs it, from `w[k][c]`.
    struct Packed {
        shape: [i64; 4],
        q: Vec<i8>,
        scale: Vec<f32>,
        offset: Vec<f32>,
    }

    fn pack(w: &[f32], k: usize, n: usize) -> Packed {
        let scale: Vec<f32> = (0..n).map(|c| (0..k).map(|i| w[i * n + c].abs()).fold(0f32, f32::max) / 127.0).collect();
        let q = |i: usize, c: usize| (w[i * n + c] / scale[c]).round().clamp(-127.0, 127.0) as i8;
        let mut packed = vec![0i8; k * n];
        for (p, s, c, j) in
            (0..n / 16).flat_map(|p| (0..k / 4).flat_map(move |s| (0..16).flat_map(move |c| (0..4).map(move |j| (p, s, c, j)))))
        {
            packed[((p * (k / 4) + s) * 16 + c) * 4 + j] = q(4 * s + j, 16 * p + c);
        }
        let offset = (0..n).map(|c| scale[c] * (0..k).map(|i| q(i, c) as f32).sum::<f32>()).collect();
        Packed { shape: [(n / 16) as i64, (k / 4) as i64, 16, 4], q: packed, scale, offset }
    }

    fn run(path: Path, x: &[f32], p: &Packed, n: usize) -> Vec<f32> {
        let w = Weights::new(&p.shape, &p.q, &p.scale, &p.offset).unwrap();
        let mut out = vec![f32::NAN; x.len() / w.k * n];
        multiply(path, x, &w, &mut out, |items, work| {
            (0..items).for_each(work);
            Ok(())
        })
        .unwrap();
        out
    }

    /// Every path gives the product of the quantized operands exactly (up to f32
    /// rounding of the final scaling), for tile remainders in rows and panels, and
    /// few rows split across columns.
    #[test]
    fn every_path_gives_the_quantized_product() {
        for (rows, k, n) in [(37, 64, 80), (3, 384, 48), (16, 36, 16), (1, 8, 112)] {
            let (x, w) = (values(rows * k, 1), values(k * n, 2));
            let p = pack(&w, k, n);
            let weights = Weights::new(&p.shape, &p.q, &p.scale, &p.offset).unwrap();
            for path in Path::available() {
                let got = run(path, &x, &p, n);
                assert!(same(&got, &exact(path, &x, &weights)), "{path:?} {rows}x{k}x{n}");
                // and the quantized product is near the real one
                for (r, c) in (0..rows).flat_map(|r| (0..n).map(move |c| (r, c))) {
                    let real: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[i * n + c] as f64).sum();
                    let size: f64 = (0..k).map(|i| (x[r * k + i] as f64 * w[i * n + c] as f64).abs()).sum();
                    let got = got[r * n + c] as f64;
                    assert!((got - real).abs() <= 0.05 * size + 1e-3, "{path:?} [{r},{c}]: {got} far from {real}");
                }
            }
        }
    }

    /// The operator takes the fastest path that multiplies right; one that does not gives
    /// way to the next.
    #[test]
    fn the_operator_takes_the_fastest_path_that_multiplies_right() {
        assert!(Path::available().all(Path::verified));
        assert_eq!(Path::chosen(), Path::detect());
        let all = || [Path::Vnni, Path::Avx2, Path::Portable].into_iter();
        assert_eq!(first_verified(all(), |p| p != Path::Vnni), Path::Avx2);
        assert_eq!(first_verified(all(), |_| false), Path::Portable);
        assert!(!same(&[1.0, 2.0], &[1.0, 2.01]) && !same(&[1.0], &[1.0, 2.0]), "a product off by 0.5% is wrong");
    }

    #[test]
    fn a_row_quantizes_with_zero_exact() {
        let x = [-1.0f32, 0.0, 0.5, 3.0, 2.0, -0.25, 0.0, 1.0, 1.5, -0.75, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 2.9];
        for top in [127.0, 255.0] {
            let mut u = [0u8; 18];
            let (s, z) = quantize_row_plain(&x, top, &mut u);
            assert!((s - 4.0 / top).abs() < 1e-6, "{s}");
            assert_eq!(u[0], 0);
            assert_eq!(u[3] as f32, top);
            assert_eq!(u[1] as f32, z, "zero stays exact");
            for (x, u) in x.iter().zip(u) {
                assert!((s * (u as f32 - z) - x).abs() <= s / 2.0 + 1e-6);
            }
        }
        let mut u = [9u8; 4];
        assert_eq!(quantize_row_plain(&[0.0; 4], 255.0, &mut u), (1.0, 0.0));
        assert_eq!(u, [0; 4]);
    }

    /// Each path's quantizer (the AVX2 one for VNNI and AVX2) is the plain one.
    #[test]
    fn the_vector_quantizer_is_the_plain_one() {
        for path in Path::available() {
            for len in [1, 7, 8, 31, 32, 33, 64, 100, 384] {
                let x = values(len, len);
                let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                // SAFETY: an available path.
                let got = unsafe { quantize_row(path, &x, &mut a) };
                assert_eq!(got, quantize_row_plain(&x, path.top(), &mut b), "{path:?} {len}");
                assert_eq!(a, b, "{path:?} {len}");
            }
        }
    }

    #[test]
    fn a_product_that_does_not_fit_is_refused() {
        let p = pack(&values(8 * 16, 5), 8, 16);
        let w = Weights::new(&p.shape, &p.q, &p.scale, &p.offset).unwrap();
        let run = |x: &[f32], out: &mut [f32]| multiply(Path::detect(), x, &w, out, |_, _| Ok(()));
        assert!(run(&[0.0; 16], &mut [0.0; 32]).is_ok());
        assert!(run(&[0.0; 15], &mut [0.0; 32]).is_err(), "a row cut short");
        assert!(run(&[0.0; 16], &mut [0.0; 16]).is_err(), "an output too short");
    }

    #[test]
    fn weights_that_are_not_packed_are_refused() {
        let (q, f) = (vec![0i8; 64 * 8], vec![0f32; 64]);
        assert!(Weights::new(&[4, 2, 16, 4], &q, &f, &f).is_ok());
        let shapes: [&[i64]; 4] = [&[4, 2, 16], &[4, 2, 8, 4], &[0, 2, 16, 4], &[4, 3, 16, 4]];
        for shape in shapes {
            assert!(Weights::new(shape, &q, &f, &f).is_err(), "{shape:?}");
        }
        assert!(Weights::new(&[4, 2, 16, 4], &q, &f[..48], &f).is_err());
    }

    /// The encoder's four products at batch 32 × 16 tokens, one thread, each path:
    /// `cargo test --release -p inference-server --lib time_products -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn time_products() {
        for (name, k, n) in [("qkv", 384, 1152), ("output", 384, 384), ("up", 384, 1536), ("down", 1536, 384)] {
            let (x, w) = (values(512 * k, 3), values(k * n, 4));
            let p = pack(&w, k, n);
            let w = Weights::new(&p.shape, &p.q, &p.scale, &p.offset).unwrap();
            let mut out = vec![0f32; 512 * n];
            let mut u = vec![0u8; k];
            let ms = super::super::timing::best(|| {
                for x in x.chunks_exact(k) {
                    // SAFETY: the path this CPU has.
                    unsafe { quantize_row(Path::detect(), x, &mut u) };
                }
            });
            eprintln!("{name:>6} quantizing 512 x {k}: {ms:.3} ms");
            for path in Path::available() {
                let ms = super::super::timing::best(|| {
                    multiply(path, &x, &w, &mut out, |items, work| {
                        (0..items).for_each(work);
                        Ok(())
                    })
                    .unwrap()
                });
                eprintln!("{name:>6} 512 x {k} x {n} {path:?}: {ms:.3} ms, {:.0} GOP/s", 2.0 * (512 * k * n) as f64 / ms / 1e6);
            }
        }
    }
}
