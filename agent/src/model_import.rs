//! Converts the EfficientNet-Lite0 checkpoint from PyTorch's legacy (pre-1.6, non-zip)
//! serialisation to safetensors, without PyTorch.
//!
//! A legacy file is five pickles in a row (magic number, protocol version, system info, the state
//! dict with storages as persistent ids, the list of storage keys), then each storage's raw bytes
//! in the order of that list, each preceded by its element count as a little-endian `i64`.
//! candle reads only the zip format, but its pickle machine parses each of these pickles.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// The first pickle of a legacy checkpoint, byte for byte: protocol 2, `LONG1` of 10 bytes holding
/// PyTorch's magic number 0x1950a86a20f9469cfc6c, `STOP`. Compared as bytes because the number does
/// not fit the pickle machine's 64-bit integers.
const LEGACY_MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];
/// The only legacy protocol version there is.
const LEGACY_PROTOCOL: i64 = 1001;

/// Why a checkpoint could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the file failed.
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    /// A pickle did not parse.
    #[error("{what}: {source}")]
    Pickle {
        /// Which of the five pickles.
        what: &'static str,
        /// candle's message.
        source: candle_core::Error,
    },
    /// Parsed, but not a legacy checkpoint of the expected shape.
    #[error("unexpected checkpoint contents: {0}")]
    Format(String),
    /// Writing the safetensors file failed.
    #[error("cannot write {0}: {1}")]
    Write(String, candle_core::Error),
}

fn read_pickle<R: BufRead>(r: &mut R, what: &'static str) -> Result<Object, ImportError> {
    let mut stack = Stack::empty();
    stack
        .read_loop(r)
        .and_then(|()| stack.finalize())
        .map_err(|source| ImportError::Pickle { what, source })
}

fn as_int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(i64::from(*i)),
        Object::Long(l) => Some(*l),
        _ => None,
    }
}

struct Entry {
    name: String,
    key: String,
    dtype: DType,
    shape: Vec<usize>,
    /// element strides, which need not be contiguous (TensorFlow-ported kernels are not)
    stride: Vec<usize>,
    start_bytes: usize,
}

/// Copies a strided view of `storage` into a contiguous row-major buffer.
fn gather(
    storage: &[u8],
    elem: usize,
    start: usize,
    shape: &[usize],
    stride: &[usize],
) -> Option<Vec<u8>> {
    let count: usize = shape.iter().product();
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let offset = start + elem * index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(storage.get(offset..offset + elem)?);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(out)
}

/// Reads a legacy checkpoint and returns its floating-point tensors by name (integer buffers such
/// as batch norm's `num_batches_tracked` are left out: inference has no use for them).
pub fn read_legacy_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>, ImportError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| ImportError::Io(shown.clone(), e))?;
    let mut r = BufReader::new(file);

    let mut magic = [0u8; LEGACY_MAGIC_PICKLE.len()];
    r.read_exact(&mut magic)
        .map_err(|e| ImportError::Io(shown.clone(), e))?;
    if magic != LEGACY_MAGIC_PICKLE {
        return Err(ImportError::Format(format!(
            "{shown} does not start with the legacy magic number (a zip checkpoint? candle reads those directly)"
        )));
    }
    let protocol = read_pickle(&mut r, "protocol version")?;
    if as_int(&protocol) != Some(LEGACY_PROTOCOL) {
        return Err(ImportError::Format(format!(
            "unsupported protocol version {protocol:?}"
        )));
    }
    let _sys_info = read_pickle(&mut r, "system info")?;
    let state = read_pickle(&mut r, "state dict")?;
    let keys = read_pickle(&mut r, "storage keys")?;

    let Object::Dict(items) = state else {
        return Err(ImportError::Format("the state dict is not a dict".into()));
    };
    let mut entries = Vec::new();
    for (name, value) in items {
        let info = value
            .into_tensor_info(name.clone(), Path::new(""))
            .map_err(|source| ImportError::Pickle {
                what: "state dict entry",
                source,
            })?;
        let Some(info) = info else {
            // e.g. `_metadata`, the module versions torch.save adds beside the tensors
            tracing::debug!(entry = ?name, "skipping a state-dict entry that is not a tensor");
            continue;
        };
        entries.push(Entry {
            name: info.name,
            key: info.path.trim_start_matches('/').to_owned(),
            dtype: info.dtype,
            shape: info.layout.dims().to_vec(),
            stride: info.layout.stride().to_vec(),
            start_bytes: info.layout.start_offset(),
        });
    }

    let Object::List(keys) = keys else {
        return Err(ImportError::Format(
            "the storage key list is not a list".into(),
        ));
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let Object::Unicode(key) = key else {
            return Err(ImportError::Format(format!(
                "storage key {key:?} is not a string"
            )));
        };
        let dtype = entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.dtype)
            .ok_or_else(|| ImportError::Format(format!("storage {key} belongs to no tensor")))?;
        let mut count = [0u8; 8];
        r.read_exact(&mut count)
            .map_err(|e| ImportError::Io(shown.clone(), e))?;
        let count = usize::try_from(i64::from_le_bytes(count))
            .map_err(|_| ImportError::Format(format!("storage {key} has a negative size")))?;
        let mut bytes = vec![0u8; count * dtype.size_in_bytes()];
        r.read_exact(&mut bytes)
            .map_err(|e| ImportError::Io(shown.clone(), e))?;
        storages.insert(key, bytes);
    }

    let mut out = Vec::new();
    for e in entries {
        if !matches!(e.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            continue;
        }
        let bytes = storages.get(&e.key).ok_or_else(|| {
            ImportError::Format(format!("no data for storage {} ({})", e.key, e.name))
        })?;
        let data = gather(
            bytes,
            e.dtype.size_in_bytes(),
            e.start_bytes,
            &e.shape,
            &e.stride,
        )
        .ok_or_else(|| ImportError::Format(format!("tensor {} runs past its storage", e.name)))?;
        let t = Tensor::from_raw_buffer(&data, e.dtype, &e.shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|source| ImportError::Pickle {
                what: "tensor data",
                source,
            })?;
        out.push((e.name, t));
    }
    Ok(out)
}

/// Converts `from` (legacy .pth) to `to` (safetensors); returns the number of tensors written.
pub fn import(from: &Path, to: &Path) -> Result<usize, ImportError> {
    let tensors = read_legacy_checkpoint(from)?;
    let n = tensors.len();
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImportError::Io(dir.display().to_string(), e))?;
    }
    candle_core::safetensors::save(&map, to)
        .map_err(|e| ImportError::Write(to.display().to_string(), e))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::gather;

    #[test]
    fn gathers_a_transposed_view_row_major() {
        // storage holds a 2x3 matrix column-major: [[0,1,2],[3,4,5]] as 0,3,1,4,2,5 (one byte each)
        let storage = [0u8, 3, 1, 4, 2, 5];
        let out = gather(&storage, 1, 0, &[2, 3], &[1, 2]).expect("in bounds");
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);
        assert!(
            gather(&storage, 1, 1, &[2, 3], &[1, 2]).is_none(),
            "past the end"
        );
    }
}
