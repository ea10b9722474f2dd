//! The server's own ONNX Runtime operators (domain `kubesentiment`), for the steps of the
//! default encoder where ONNX Runtime's CPU kernels spend more than the work needs:
//!
//! - `SelfAttention(qkv [tokens, 3d], bias [3d], mask_index [batch]) -> [tokens, d]`,
//!   attribute `num_heads`: multi-head attention after one QKV product, rows padded on
//!   the right, `mask_index` each row's length (as `EmbedLayerNormalization` writes it).
//!   `QAttention` runs each head's two small products as library GEMM calls, hundreds of
//!   them a layer at short lengths; here one text's heads are a few vector loops each.
//! - `BiasGelu(x [.., f], bias [f]) -> [.., f]`: exact GELU, `x·Φ(x)` with erf, of
//!   `x + bias`. ONNX Runtime's erf is four lanes wide; this one is as wide as the CPU.
//! - `ResidualLayerNorm(x [tokens, d], bias [d], skip [tokens, d], gamma [d], beta [d])
//!   -> [tokens, d]`, attribute `epsilon`: `LayerNorm(x + bias + skip)`, the residual
//!   step after each projection, in one pass instead of ONNX Runtime's three (two `Add`s
//!   and `LayerNormalization`, each a trip through memory).
//! - `QuantizedMatMul(x, weight, scale, offset)`: the int8 products, each activation row
//!   quantized with its own scale (`kernels/matmul.rs` has the layout and the CPU paths).
//!
//! `scripts/build_encoder.py` writes them into the int8 graph; every session registers
//! them ([`domain`]), so graphs without them load as before. The first three are plain
//! Rust over fixed 16-lane blocks, compiled for AVX-512 and AVX2 besides the baseline and
//! picked at run time (`multiversion`); ONNX Runtime's intra-op threads share the work
//! (`par_for`). The tests hold each to a direct f64 reading of its definition, and
//! `the_int8_encoder_stays_within_its_tolerance_of_the_fp32_model` holds the graph that
//! uses them to the same model in ONNX Runtime's own operators. docs/MODELS.md has what
//! each was worth.

mod matmul;

pub use matmul::QuantizedMatMul;
use multiversion::multiversion;
use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::{IntoShape, TensorElementType, ValueRef, ValueRefMut};

/// The operator domain the default encoder's graph imports.
pub const DOMAIN: &str = "kubesentiment";

/// The domain with all four operators, to register on a session.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(SelfAttention)?.add(BiasGelu)?.add(ResidualLayerNorm)?.add(QuantizedMatMul)
}

fn op_error(what: &str) -> ort::Error {
    ort::Error::new(format!("kubesentiment operator: {what}"))
}

/// Input `i` of operator `op`, which declares it required.
fn input<'a>(ctx: &'a ComputeContext, op: &str, i: usize) -> ort::Result<ValueRef<'a>> {
    ctx.input(i)?.ok_or_else(|| op_error(&format!("{op}: input {i} is missing")))
}

/// The output of operator `op`, allocated at `shape`.
fn output<'a>(ctx: &'a ComputeContext, op: &str, shape: impl IntoShape) -> ort::Result<ValueRefMut<'a>> {
    ctx.output(0, shape)?.ok_or_else(|| op_error(&format!("{op}: no output")))
}

/// A buffer whose disjoint pieces parallel work items fill.
struct Shared<T>(*mut T);
// SAFETY: every user writes only its own piece; `parallel_chunks` hands out disjoint ones.
unsafe impl<T: Send> Sync for Shared<T> {}
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Shared<T> {
    /// # Safety
    /// `start..start + len` must lie inside the buffer, and no one else may touch it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.at(start), len) }
    }

    /// # Safety
    /// `start` must lie inside the buffer.
    unsafe fn at(&self, start: usize) -> *mut T {
        unsafe { self.0.add(start) }
    }
}

/// Runs `work(i, piece)` for each `chunk`-long piece of `out` (the last may be shorter),
/// on ONNX Runtime's intra-op threads.
fn parallel_chunks<T: Send>(
    ctx: &ComputeContext,
    out: &mut [T],
    chunk: usize,
    work: impl Fn(usize, &mut [T]) + Sync + Send,
) -> ort::Result<()> {
    let (len, items) = (out.len(), out.len().div_ceil(chunk.max(1)));
    let shared = Shared(out.as_mut_ptr());
    parallel(ctx, items, &|i: usize| {
        let start = i * chunk;
        // SAFETY: the pieces are disjoint, inside `out`, and `out` outlives every item.
        work(i, unsafe { shared.slice(start, chunk.min(len - start)) })
    })
}

/// Runs `work(i)` for `i` in `0..items`, on ONNX Runtime's intra-op threads when there
/// is more than one.
fn parallel(ctx: &ComputeContext, items: usize, work: &(dyn Fn(usize) + Sync)) -> ort::Result<()> {
    match items {
        0 => Ok(()),
        1 => {
            work(0);
            Ok(())
        }
        _ => ctx.par_for(items, 0, work),
    }
}

pub struct SelfAttention;

impl Operator for SelfAttention {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "SelfAttention"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let heads = info.get::<i64>("num_heads").filter(|h| *h > 0).ok_or_else(|| op_error("SelfAttention needs num_heads > 0"))?;
        let heads = heads as usize;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let (qkv, bias, lengths) = (input(ctx, "SelfAttention", 0)?, input(ctx, "SelfAttention", 1)?, input(ctx, "SelfAttention", 2)?);
            let (shape, qkv) = qkv.try_extract_tensor::<f32>()?;
            let (_, bias) = bias.try_extract_tensor::<f32>()?;
            let (_, lengths) = lengths.try_extract_tensor::<i32>()?;
            let shape = Shape::attention(shape, bias.len(), lengths.len(), heads).map_err(|e| op_error(&e))?;
            let mut out = output(ctx, "SelfAttention", [shape.tokens() as i64, shape.d as i64])?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            parallel_chunks(ctx, out, shape.sequence * shape.d, |row, out| attend(&shape, qkv, bias, lengths[row], row, out))
        }))
    }
}

/// The sizes of one `SelfAttention` call.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub sequence: usize,
    pub d: usize,
    pub heads: usize,
}

impl Shape {
    fn attention(qkv: &[i64], bias: usize, batch: usize, heads: usize) -> Result<Self, String> {
        let [tokens, width] = qkv else { return Err(format!("SelfAttention: qkv must be [tokens, 3d], not {qkv:?}")) };
        let (tokens, width) = (*tokens as usize, *width as usize);
        if width % 3 != 0
            || bias != width
            || batch == 0
            || tokens % batch != 0
            || (width / 3) % heads != 0
            || !HEAD_SIZES.contains(&(width / 3 / heads))
        {
            return Err(format!("SelfAttention: qkv {qkv:?}, bias [{bias}], mask_index [{batch}], {heads} heads do not fit"));
        }
        Ok(Self { batch, sequence: tokens / batch, d: width / 3, heads })
    }

    fn tokens(&self) -> usize {
        self.batch * self.sequence
    }
}

/// Lanes of the fixed-width inner loops: one AVX-512 register, two AVX2 ones. Loops of
/// this fixed length compile to whole vector operations however short the row.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// Attention for one row (one text), every head: `softmax(q·kᵀ/√dh over the row's first
/// `length` keys)·v`, into `out` (the row's `[sequence, d]`).
///
/// The row's keys and values are first copied head by head into contiguous buffers,
/// reading each token's `[3d]` in order: reading them in place, head by head, is a
/// strided walk through memory that waits on the cache more than it computes.
/// Queries then run along the lanes, sixteen at a time, and keys down the rows, so every
/// step (scores, the softmax over keys, the weighted sum of values) is whole-block
/// arithmetic with no sums across lanes. Two identities save work: the key bias adds the
/// same `q·b` to every score of a query, which softmax cancels, so it is left out; and
/// the weights sum to one, so the value bias is added once to each output.
fn attend(shape: &Shape, qkv: &[f32], bias: &[f32], length: i32, row: usize, out: &mut [f32]) {
    // The head size is a constant of each copy, so its loops unroll whole.
    match shape.d / shape.heads {
        16 => attend_heads::<16>(shape, qkv, bias, length, row, out),
        32 => attend_heads::<32>(shape, qkv, bias, length, row, out),
        64 => attend_heads::<64>(shape, qkv, bias, length, row, out),
        128 => attend_heads::<128>(shape, qkv, bias, length, row, out),
        dh => unreachable!("head size {dh}: Shape::attention admits only HEAD_SIZES"),
    }
}

/// The head sizes `SelfAttention` runs: whole blocks, as every BERT size is.
const HEAD_SIZES: [usize; 4] = [16, 32, 64, 128];

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
fn attend_heads<const DH: usize>(shape: &Shape, qkv: &[f32], bias: &[f32], length: i32, row: usize, out: &mut [f32]) {
    let Shape { sequence, d, heads, .. } = *shape;
    let keys = (length.max(1) as usize).min(sequence);
    let scale = 1.0 / (DH as f32).sqrt();
    let tokens = &qkv[row * sequence * 3 * d..][..sequence * 3 * d];
    // [head][key], keys and values of one head contiguous
    let (mut k, mut v) = (vec![[0f32; DH]; heads * keys], vec![[0f32; DH]; heads * keys]);
    for (j, token) in tokens.chunks_exact(3 * d).take(keys).enumerate() {
        for h in 0..heads {
            k[h * keys + j] = *head::<DH>(&token[d..], h);
            v[h * keys + j] = *head::<DH>(&token[2 * d..], h);
        }
    }
    let mut q = vec![0f32; d];
    let mut qt = vec![[0f32; LANES]; d];
    let mut weights = vec![[0f32; LANES]; keys];
    for first in (0..sequence).step_by(LANES) {
        let queries = LANES.min(sequence - first);
        // qt[h·DH + c] = component c of head h of each query, scaled and biased
        for (l, token) in tokens.chunks_exact(3 * d).skip(first).take(queries).enumerate() {
            for (q, (x, b)) in q.iter_mut().zip(token[..d].iter().zip(&bias[..d])) {
                *q = (x + b) * scale;
            }
            for (qt, q) in qt.iter_mut().zip(&q) {
                qt[l] = *q;
            }
        }
        for h in 0..heads {
            let (k, v) = (&k[h * keys..][..keys], &v[h * keys..][..keys]);
            let qt: &[Lanes; DH] = qt[h * DH..][..DH].try_into().expect("a whole head");
            // weights[j][l]: query l's score of key j, then its softmax weight
            for (w, k) in weights.iter_mut().zip(k) {
                *w = weighted_sum(DH, |c| (k[c], &qt[c]));
            }
            let max = weights.iter().fold([f32::NEG_INFINITY; LANES], |m, w| std::array::from_fn(|l| m[l].max(w[l])));
            let mut sum = [0f32; LANES];
            for w in weights.iter_mut() {
                for l in 0..LANES {
                    w[l] = exp(w[l] - max[l]);
                    sum[l] += w[l];
                }
            }
            let v_bias = head::<DH>(&bias[2 * d..], h);
            for l in 0..queries {
                let out: &mut [f32; DH] = (&mut out[(first + l) * d + h * DH..][..DH]).try_into().expect("a whole head");
                let inverse = 1.0 / sum[l];
                for at in (0..DH).step_by(LANES) {
                    let sum_v = weighted_sum(keys, |j| (weights[j][l], v[j][at..][..LANES].try_into().expect("a block")));
                    for i in 0..LANES {
                        out[at + i] = sum_v[i].mul_add(inverse, v_bias[at + i]);
                    }
                }
            }
        }
    }
}

/// Head `h`'s part of a token's queries, keys or values.
#[inline(always)]
fn head<const DH: usize>(x: &[f32], h: usize) -> &[f32; DH] {
    x[h * DH..][..DH].try_into().expect("a whole head")
}

/// `Σ w_k · x_k` over `n` terms, block-wide, in four independent chains so that
/// consecutive multiply-adds do not wait for each other.
#[inline(always)]
fn weighted_sum<'a>(n: usize, term: impl Fn(usize) -> (f32, &'a Lanes)) -> Lanes {
    #[inline(always)]
    fn add(mut acc: Lanes, (w, x): (f32, &Lanes)) -> Lanes {
        for l in 0..LANES {
            acc[l] = w.mul_add(x[l], acc[l]);
        }
        acc
    }
    let mut acc = [[0f32; LANES]; 4];
    let mut k = 0;
    while k + 4 <= n {
        acc = [add(acc[0], term(k)), add(acc[1], term(k + 1)), add(acc[2], term(k + 2)), add(acc[3], term(k + 3))];
        k += 4;
    }
    for k in k..n {
        acc[0] = add(acc[0], term(k));
    }
    std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]))
}

pub struct ResidualLayerNorm;

/// Tokens of `ResidualLayerNorm` per work item.
const NORM_ROWS: usize = 32;

impl Operator for ResidualLayerNorm {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "ResidualLayerNorm"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [TensorElementType::Float32; 5].map(OperatorInput::required)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let epsilon = info.get::<f32>("epsilon").ok_or_else(|| op_error("ResidualLayerNorm needs epsilon"))?;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let input = |i: usize| input(ctx, "ResidualLayerNorm", i);
            let (x, bias, skip, gamma, beta) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
            let (shape, x) = x.try_extract_tensor::<f32>()?;
            let (_, skip) = skip.try_extract_tensor::<f32>()?;
            let params = [bias.try_extract_tensor::<f32>()?.1, gamma.try_extract_tensor::<f32>()?.1, beta.try_extract_tensor::<f32>()?.1];
            let d = params[0].len();
            if d == 0 || shape.last().copied() != Some(d as i64) || skip.len() != x.len() || params.iter().any(|p| p.len() != d) {
                return Err(op_error(&format!(
                    "ResidualLayerNorm: input {shape:?}, skip of {} and parameters of {d} do not fit",
                    skip.len()
                )));
            }
            let mut out = output(ctx, "ResidualLayerNorm", shape.to_vec())?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            parallel_chunks(ctx, out, NORM_ROWS * d, |i, out| {
                let at = i * NORM_ROWS * d;
                residual_layer_norm(&x[at..][..out.len()], &skip[at..][..out.len()], params, epsilon, out);
            })
        }))
    }
}

/// `out = LayerNorm(x + bias + skip) · gamma + beta`, token by token; `[bias, gamma, beta]`
/// as long as a token.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn residual_layer_norm(x: &[f32], skip: &[f32], [bias, gamma, beta]: [&[f32]; 3], epsilon: f32, out: &mut [f32]) {
    let d = bias.len();
    for ((x, skip), out) in x.chunks_exact(d).zip(skip.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
        for (((o, x), s), b) in out.iter_mut().zip(x).zip(skip).zip(bias) {
            *o = x + b + s;
        }
        let mean = lane_sum(out, |v| v) / d as f32;
        let variance = lane_sum(out, |v| (v - mean) * (v - mean)) / d as f32;
        let inverse = 1.0 / (variance + epsilon).sqrt();
        for ((o, g), b) in out.iter_mut().zip(gamma).zip(beta) {
            *o = ((*o - mean) * inverse).mul_add(*g, *b);
        }
    }
}

/// `Σ f(x_i)`, summed lane-wise over whole blocks first, so that it vectorizes.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let blocks = x.chunks_exact(LANES);
    let rest: f32 = blocks.remainder().iter().map(|v| f(*v)).sum();
    let lanes = blocks.fold([0f32; LANES], |acc, b| std::array::from_fn(|l| acc[l] + f(b[l])));
    lanes.iter().sum::<f32>() + rest
}

pub struct BiasGelu;

/// Rows of `BiasGelu` per work item.
const GELU_ROWS: usize = 32;

impl Operator for BiasGelu {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "BiasGelu"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32), OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let (x, bias) = (input(ctx, "BiasGelu", 0)?, input(ctx, "BiasGelu", 1)?);
            let (shape, x) = x.try_extract_tensor::<f32>()?;
            let (_, bias) = bias.try_extract_tensor::<f32>()?;
            let f = bias.len();
            if f == 0 || shape.last().copied() != Some(f as i64) {
                return Err(op_error(&format!("BiasGelu: input {shape:?} and bias [{f}] do not fit")));
            }
            let mut out = output(ctx, "BiasGelu", shape.to_vec())?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            parallel_chunks(ctx, out, GELU_ROWS * f, |i, out| bias_gelu(&x[i * GELU_ROWS * f..][..out.len()], bias, out))
        }))
    }
}

/// `out = gelu(x + bias)`, row by row (`bias` as long as a row).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn bias_gelu(x: &[f32], bias: &[f32], out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(bias.len()).zip(out.chunks_exact_mut(bias.len())) {
        for ((o, x), b) in or.iter_mut().zip(xr).zip(bias) {
            *o = gelu(x + b);
        }
    }
}

/// Exact GELU, `x·Φ(x)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// e^x for x in [-87, 88] (clamped there), relative error about 2e-7: 2^n times
/// Cephes' degree-6 polynomial on the remainder. Branch-free, unlike libm's, so the
/// softmax loop vectorizes.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2), by the float trick: adding 1.5 * 2^23 rounds to an integer.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf as a rational function of odd degree 13 over even degree 8, on `x` clamped to
/// ±4 (where erf is 1 to within f32's precision); largest error about 4e-7. Branch-free,
/// so loops over it vectorize. The coefficients are Eigen's (`generic_fast_erf_float`).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_6e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf to about 1e-9: its Maclaurin series below |x| = 4, ±1 beyond (off by < 2e-8).
    fn erf_reference(x: f64) -> f64 {
        if x.abs() >= 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_5e_7_everywhere() {
        let worst =
            (-60_000..=60_000).map(|i| i as f64 / 10_000.0).map(|x| (erf(x as f32) as f64 - erf_reference(x)).abs()).fold(0.0, f64::max);
        assert!(worst < 5e-7, "erf off by {worst}");
    }

    #[test]
    fn exp_is_within_3e_7_relative() {
        let worst = (-870_000..=880_000)
            .map(|i| i as f64 / 10_000.0)
            .map(|x| ((exp(x as f32) as f64 - (x as f32 as f64).exp()) / (x as f32 as f64).exp()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 3e-7, "exp off by {worst} relative");
    }

    #[test]
    fn bias_gelu_is_x_phi_x_of_the_biased_input() {
        let bias = [0.5, -1.0, 2.0];
        let x: Vec<f32> = (0..30).map(|i| i as f32 * 0.37 - 5.0).collect();
        let mut out = vec![0.0; x.len()];
        bias_gelu(&x, &bias, &mut out);
        for (i, (x, o)) in x.iter().zip(&out).enumerate() {
            let v = (*x + bias[i % 3]) as f64;
            let want = 0.5 * v * (1.0 + erf_reference(v / 2f64.sqrt()));
            assert!((*o as f64 - want).abs() < 1e-5, "gelu({v}) = {o}, want {want}");
        }
    }

    #[test]
    fn residual_layer_norm_normalises_the_sum() {
        let d = 40; // two whole blocks and a remainder
        let x: Vec<f32> = (0..3 * d).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
        let skip: Vec<f32> = (0..3 * d).map(|i| (i as f32 * 0.377).cos()).collect();
        let bias: Vec<f32> = (0..d).map(|i| i as f32 * 0.01).collect();
        let gamma: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.02).collect();
        let beta: Vec<f32> = (0..d).map(|i| -(i as f32) * 0.03).collect();
        let mut out = vec![0.0; 3 * d];
        residual_layer_norm(&x, &skip, [&bias, &gamma, &beta], 1e-12, &mut out);
        for t in 0..3 {
            let sum: Vec<f64> = (0..d).map(|c| (x[t * d + c] + bias[c] + skip[t * d + c]) as f64).collect();
            let mean = sum.iter().sum::<f64>() / d as f64;
            let var = sum.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            for c in 0..d {
                let want = (sum[c] - mean) / (var + 1e-12).sqrt() * gamma[c] as f64 + beta[c] as f64;
                assert!((out[t * d + c] as f64 - want).abs() < 1e-5, "token {t} column {c}: {}, want {want}", out[t * d + c]);
            }
        }
    }

    /// Attention as the paper writes it, per row and head, in f64.
    fn attention_reference(shape: &Shape, qkv: &[f32], bias: &[f32], lengths: &[i32]) -> Vec<f64> {
        let Shape { batch, sequence, d, heads } = *shape;
        let dh = d / heads;
        let at = |t: usize, c: usize| (qkv[t * 3 * d + c] + bias[c]) as f64;
        let mut out = vec![0.0; batch * sequence * d];
        for (b, length) in lengths.iter().enumerate().take(batch) {
            let keys = *length as usize;
            for h in 0..heads {
                for i in 0..sequence {
                    let t = b * sequence + i;
                    let scores: Vec<f64> = (0..keys)
                        .map(|j| {
                            (0..dh).map(|c| at(t, h * dh + c) * at(b * sequence + j, d + h * dh + c)).sum::<f64>() / (dh as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for c in 0..dh {
                        out[t * d + h * dh + c] =
                            (0..keys).map(|j| weights[j] * at(b * sequence + j, 2 * d + h * dh + c)).sum::<f64>() / sum;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn self_attention_matches_its_definition_with_padding() {
        let shape = Shape { batch: 3, sequence: 19, d: 96, heads: 3 };
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        let qkv: Vec<f32> = (0..shape.tokens() * 3 * shape.d).map(|_| next()).collect();
        let bias: Vec<f32> = (0..3 * shape.d).map(|_| next()).collect();
        let lengths = [19, 17, 1];
        let mut out = vec![f32::NAN; shape.tokens() * shape.d];
        for (row, out) in out.chunks_exact_mut(shape.sequence * shape.d).enumerate() {
            attend(&shape, &qkv, &bias, lengths[row], row, out);
        }
        let want = attention_reference(&shape, &qkv, &bias, &lengths);
        for (i, (o, w)) in out.iter().zip(&want).enumerate() {
            assert!((*o as f64 - w).abs() < 1e-5, "element {i}: {o}, want {w}");
        }
    }

    #[test]
    fn attention_shapes_that_do_not_fit_are_refused() {
        assert!(Shape::attention(&[8, 144], 144, 2, 3).is_ok());
        assert!(Shape::attention(&[8, 144], 143, 2, 3).is_err());
        assert!(Shape::attention(&[8, 144], 144, 3, 3).is_err());
        assert!(Shape::attention(&[8, 143], 143, 1, 3).is_err());
        assert!(Shape::attention(&[8, 144], 144, 0, 3).is_err());
        assert!(Shape::attention(&[8, 144, 1], 144, 2, 3).is_err());
        assert!(Shape::attention(&[8, 72], 72, 2, 3).is_err(), "heads of 8 are not whole blocks");
        assert!(Shape::attention(&[8, 432], 432, 2, 3).is_err(), "heads of 48 are not a size it runs");
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Best of five, in ms: `cargo test --release -p inference-server --lib time_kernels -- --ignored --nocapture`
    pub(super) fn best(mut f: impl FnMut()) -> f64 {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..20 {
                    f();
                }
                t.elapsed().as_secs_f64() * 1000.0 / 20.0
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    #[ignore]
    fn time_kernels() {
        let shape = Shape { batch: 32, sequence: 16, d: 384, heads: 12 };
        let qkv: Vec<f32> = (0..shape.tokens() * 3 * shape.d).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let bias = vec![0.1f32; 3 * shape.d];
        let mut out = vec![0f32; shape.tokens() * shape.d];
        let ms = best(|| {
            for (row, out) in out.chunks_exact_mut(16 * 384).enumerate() {
                attend(&shape, &qkv, &bias, 16, row, out);
            }
        });
        eprintln!("attention 32 x 16 tokens, 12 heads of 32: {ms:.3} ms a layer");
        let x: Vec<f32> = (0..512 * 1536).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let b = vec![0.1f32; 1536];
        let mut y = vec![0f32; x.len()];
        eprintln!("gelu 512 x 1536: {:.3} ms a layer", best(|| bias_gelu(&x, &b, &mut y)));
        let (x, skip, p) = (&y[..512 * 384], &x[..512 * 384], vec![0.5f32; 384]);
        let mut out = vec![0f32; 512 * 384];
        eprintln!("residual layer norm 512 x 384: {:.3} ms", best(|| residual_layer_norm(x, skip, [&p, &p, &p], 1e-12, &mut out)));
    }
}
