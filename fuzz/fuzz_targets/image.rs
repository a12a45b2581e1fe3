//! Image input: arbitrary bytes as a PNG (upload), then what the SDK does with an input image
//! (resize to the model's size, CHW conversion).
#![no_main]

use libfuzzer_sys::fuzz_target;
use transfusion_sdk::RgbImage;

fuzz_target!(|data: &[u8]| {
    // 64 Kpixel cap: the default (16 Mpixel) is right for apps but makes each execution slow;
    // the limit's own check runs either way.
    if let Ok(image) = RgbImage::decode_png_limited(data, "fuzz.png", 1 << 16) {
        if let Ok(small) = image.resize(32, 32) {
            let chw = small.to_chw();
            let _ = RgbImage::from_chw(&chw, 32, 32);
        }
        let _ = image.encode_png();
    }
});
