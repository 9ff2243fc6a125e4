//! From packed RGB pixels to the network's input: `(1, 3, H, W)`, `(x - 127) / 128`.

use candle_core::{Device, Result, Tensor};

/// Mean subtracted from every 8-bit channel value (the Lite family's training convention).
pub const INPUT_MEAN: f32 = 127.0;
/// Divisor applied after subtracting the mean.
pub const INPUT_STD: f32 = 128.0;

/// Converts packed 8-bit RGB rows (`stride` bytes apart) into a normalised NCHW tensor.
pub fn rgb_to_tensor(
    pixels: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    device: &Device,
) -> Result<Tensor> {
    if stride < width * 3 || pixels.len() < stride * (height.max(1) - 1) + width * 3 {
        candle_core::bail!(
            "rgb frame of {width}x{height} with stride {stride} needs more than the {} bytes given",
            pixels.len()
        );
    }
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for y in 0..height {
        let row = &pixels[y * stride..y * stride + width * 3];
        for (x, px) in row.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                chw[c * plane + y * width + x] = (f32::from(v) - INPUT_MEAN) / INPUT_STD;
            }
        }
    }
    Tensor::from_vec(chw, (1, 3, height, width), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_reorders_channels() {
        // 2x1 image: pure red, then mid grey; rows padded to 8 bytes
        let px = [255, 0, 0, 127, 127, 127, 9, 9];
        let t = rgb_to_tensor(&px, 2, 1, 8, &Device::Cpu).expect("tensor");
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(v, vec![1.0, 0.0, -127.0 / 128.0, 0.0, -127.0 / 128.0, 0.0]);
    }

    #[test]
    fn refuses_short_buffers() {
        assert!(rgb_to_tensor(&[0; 5], 2, 1, 6, &Device::Cpu).is_err());
    }
}
