//! The libtorch backend: a TorchScript `CModule` run under no-grad on CPU or CUDA. It is only
//! ever called from the inference thread, never from the async runtime.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};

use super::{Classifier, DeviceSpec, Manifest, ModelError, PaddedBatch};

/// A TorchScript sequence classifier taking `(input_ids, attention_mask)` and returning logits.
pub struct TorchClassifier {
    module: CModule,
    device: Device,
    labels: Vec<String>,
}

impl TorchClassifier {
    /// Loads `model.pt` from `dir` on the requested device; `intra_op_threads` 0 keeps libtorch's
    /// default.
    pub fn load(
        dir: &Path,
        manifest: &Manifest,
        device: DeviceSpec,
        intra_op_threads: usize,
    ) -> Result<Self, ModelError> {
        let device = match device {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Auto => Device::cuda_if_available(),
            DeviceSpec::Cuda(n) => {
                if !tch::Cuda::is_available() || n >= tch::Cuda::device_count() as usize {
                    return Err(ModelError::Device(format!("cuda:{n}")));
                }
                Device::Cuda(n)
            }
        };
        if intra_op_threads > 0 {
            tch::set_num_threads(intra_op_threads as i32);
        }
        let path = dir.join(&manifest.files.model.path);
        let mut module =
            CModule::load_on_device(&path, device).map_err(|e| ModelError::Missing {
                path: path.clone(),
                message: e.to_string(),
            })?;
        module.set_eval();
        Ok(TorchClassifier {
            module,
            device,
            labels: manifest.labels.clone(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }
}

impl Classifier for TorchClassifier {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn classify(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, ModelError> {
        let shape = [batch.rows as i64, batch.cols as i64];
        let probs = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let ids = Tensor::from_slice(&batch.ids)
                .view(shape)
                .to_device(self.device);
            let mask = Tensor::from_slice(&batch.mask)
                .view(shape)
                .to_device(self.device);
            let logits = self.module.forward_ts(&[ids, mask])?;
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
