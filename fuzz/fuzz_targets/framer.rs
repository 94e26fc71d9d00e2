//! The stream framer and the datagram framer on arbitrary bytes, split at arbitrary points:
//! no panic, every frame within the cap, and whole-buffer and split feeding agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipreg_registrar::{frame_datagram, Frame, StreamFramer};

const CAP: usize = 4096;

fn drain(f: &mut StreamFramer, out: &mut Vec<Frame>) -> bool {
    loop {
        match f.next_frame() {
            Ok(Some(fr)) => {
                if let Frame::Message(m) = &fr {
                    assert!(m.len() <= CAP, "frame above the cap");
                }
                out.push(fr);
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = frame_datagram(data, CAP);
    let split = data.first().map(|b| *b as usize).unwrap_or(0);

    let mut whole = StreamFramer::new(CAP);
    let mut a = Vec::new();
    let ok_a = whole.push(data).is_ok() && drain(&mut whole, &mut a);

    let mut parts = StreamFramer::new(CAP);
    let mut b = Vec::new();
    let mut ok_b = true;
    for chunk in data.chunks(split.max(1)) {
        if parts.push(chunk).is_err() || !drain(&mut parts, &mut b) {
            ok_b = false;
            break;
        }
    }
    // Without errors on either side, chunking must not change what is framed.
    if ok_a && ok_b {
        assert_eq!(a, b, "split feeding framed differently");
    }
});
