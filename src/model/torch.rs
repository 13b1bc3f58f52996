//! The libtorch backend: a TorchScript `CModule` run under no-grad on CPU or CUDA, optionally in
//! half precision (accepted only after a parity check against fp32 at load). It is only ever
//! called from the inference thread, never from the async runtime.

use tch::{CModule, Device, Kind, Tensor};

use super::{Classifier, DeviceSpec, Manifest, ModelError, PaddedBatch, Precision};

/// How to load and run the model.
pub struct TorchOptions {
    pub device: DeviceSpec,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    pub intra_op_threads: usize,
    pub precision: Precision,
    /// Largest |Δp| between fp32 and half precision accepted at load.
    pub half_parity_max_abs_diff: f32,
    /// Real tokenised tweets for the half-precision parity check.
    pub parity_batch: Option<PaddedBatch>,
}

/// Sets the calling thread's libtorch switches: plain execution of the scripted graph (see
/// `TorchClassifier::load` for why) and `intra_op_threads` (0 keeps libtorch's default). The
/// executor switches are thread-local, so every thread that runs a model calls this first.
pub fn configure_thread(intra_op_threads: usize) {
    tch::jit::set_profiling_mode(false);
    tch::jit::set_graph_executor_optimize(false);
    if intra_op_threads > 0 {
        tch::set_num_threads(intra_op_threads as i32);
    }
}

/// What the start-up parity check measured.
#[derive(Debug, Clone, Copy)]
pub struct Parity {
    pub max_abs_diff: f32,
    pub rows: usize,
    pub label_agreement: usize,
}

/// A TorchScript sequence classifier taking `(input_ids, attention_mask)` and returning logits.
pub struct TorchClassifier {
    module: CModule,
    device: Device,
    labels: Vec<String>,
    parity: Option<Parity>,
}

impl TorchClassifier {
    /// Loads the TorchScript `weights` (the bytes of `model.pt` as read and hashed, see
    /// [`super::Manifest::read_files`]) on the requested device and precision.
    pub fn load(
        weights: &[u8],
        manifest: &Manifest,
        opts: TorchOptions,
    ) -> Result<Self, ModelError> {
        let device = match opts.device {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Auto => Device::cuda_if_available(),
            DeviceSpec::Cuda(n) => {
                if !tch::Cuda::is_available() || n >= tch::Cuda::device_count() as usize {
                    return Err(ModelError::Device(format!("cuda:{n}")));
                }
                Device::Cuda(n)
            }
        };
        let half = match opts.precision {
            Precision::Fp32 => None,
            Precision::Fp16 => Some(Kind::Half),
            Precision::Bf16 => Some(Kind::BFloat16),
        };
        if half.is_some() && device == Device::Cpu {
            return Err(ModelError::Precision(format!(
                "model.precision = {:?} needs a CUDA device, but the model runs on the CPU (no GPU found or model.device = cpu); use precision = \"fp32\" on CPU",
                opts.precision
            )));
        }
        // TorchScript's executors re-specialise the graph for new input shapes (the profiling
        // executor profiles and re-fuses, the optimising legacy one re-optimises per complete
        // shape). Batches here change rows × length all the time, and that recompilation cost
        // more than the model itself (H100, fp16, base-sized: ~300 ms per new shape). Plain
        // execution of the scripted graph has no per-shape cost. The optimiser switch is
        // thread-local: the loading thread sets them here, every inference thread for itself.
        configure_thread(opts.intra_op_threads);
        let mut module = CModule::load_data_on_device(&mut std::io::Cursor::new(weights), device)
            .map_err(|e| ModelError::Missing {
            path: manifest.files.model.path.clone().into(),
            message: format!("not a TorchScript model: {e}"),
        })?;
        module.set_eval();
        let mut c = TorchClassifier {
            module,
            device,
            labels: manifest.labels.clone(),
            parity: None,
        };
        if let Some(kind) = half {
            let batch = opts.parity_batch.ok_or_else(|| {
                ModelError::Precision("half precision needs a parity batch; this is a bug".into())
            })?;
            let reference = c.classify(&batch)?;
            c.module.to(device, kind, false);
            let got = c.classify(&batch)?;
            let parity = compare(&reference, &got);
            if parity.max_abs_diff > opts.half_parity_max_abs_diff {
                return Err(ModelError::Precision(format!(
                    "{:?} differs from fp32 by up to {:.4} in probability on {} real tweets ({} of them change label), above model.half_parity_max_abs_diff = {}; use precision = \"fp32\" (or bf16/fp16, whichever passes) for this model",
                    opts.precision,
                    parity.max_abs_diff,
                    parity.rows,
                    parity.rows - parity.label_agreement,
                    opts.half_parity_max_abs_diff
                )));
            }
            c.parity = Some(parity);
        }
        Ok(c)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The half-precision parity measured at load (`None` in fp32).
    pub fn parity(&self) -> Option<Parity> {
        self.parity
    }

    /// Ids and mask as one `[2, rows, cols]` tensor on the model's device. On CUDA the host
    /// copy is pinned so the transfer is a single asynchronous DMA (libtorch caches pinned
    /// blocks, so this does not allocate page-locked memory for every batch).
    fn inputs(&self, batch: &PaddedBatch) -> Tensor {
        let mut both = Vec::with_capacity(batch.ids.len() * 2);
        both.extend_from_slice(&batch.ids);
        both.extend_from_slice(&batch.mask);
        let host = Tensor::from_slice(&both).view([2, batch.rows as i64, batch.cols as i64]);
        match self.device {
            Device::Cpu => host,
            d => host
                .internal_pin_memory(d)
                .to_device_(d, Kind::Int64, true, false),
        }
    }
}

fn compare(reference: &[Vec<f32>], got: &[Vec<f32>]) -> Parity {
    let mut max_abs_diff = 0f32;
    let mut label_agreement = 0;
    for (a, b) in reference.iter().zip(got) {
        for (x, y) in a.iter().zip(b) {
            max_abs_diff = max_abs_diff.max((x - y).abs());
        }
        label_agreement += usize::from(super::argmax(a) == super::argmax(b));
    }
    Parity {
        max_abs_diff,
        rows: reference.len(),
        label_agreement,
    }
}

impl Classifier for TorchClassifier {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn classify(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, ModelError> {
        let probs = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let inputs = self.inputs(batch);
            let logits = self.module.forward_ts(&[inputs.get(0), inputs.get(1)])?;
            Ok(logits
                .softmax(-1, Kind::Float)
                .to_device(Device::Cpu)
                .contiguous())
        })
        .map_err(|e| ModelError::Inference(e.to_string()))?;
        let n = self.labels.len();
        let flat = Vec::<f32>::try_from(probs.view([-1]))
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        if flat.len() != batch.rows * n {
            return Err(ModelError::Inference(format!(
                "model returned {} values for {} rows × {} labels; does the manifest list the model's labels?",
                flat.len(),
                batch.rows,
                n
            )));
        }
        Ok(flat.chunks(n).map(<[f32]>::to_vec).collect())
    }
}
