//! Feeds arbitrary bytes to `Edit::parse` for every kind of write body. It must never panic, and
//! whatever it accepts must be forwarded as a body that is accepted again and written the same
//! (the checked edit is a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::token::edit::{Edit, EditKind, Limits};

/// A fixed clock (2027-01-15), so a run is reproducible.
const NOW: i64 = 1_800_000_000;

const KINDS: [EditKind; 6] = [
    EditKind::Create,
    EditKind::Update,
    EditKind::StatusOnly,
    EditKind::Ids,
    EditKind::Patch,
    EditKind::BatchUpdate,
];

fuzz_target!(|data: &[u8]| {
    // The gateway's defaults, plus one fork field so the pass-through path is exercised too.
    let limits = Limits {
        extra_fields: vec!["billing_type".to_string()],
        ..Limits::default()
    };
    for kind in KINDS {
        if let Ok(edit) = Edit::parse(kind, data, &limits, NOW) {
            let written = edit.to_json();
            match Edit::parse(kind, &written, &limits, NOW) {
                Ok(again) => {
                    assert_eq!(
                        again, edit,
                        "{kind:?}: the forwarded body reads differently"
                    );
                    assert_eq!(
                        again.to_json(),
                        written,
                        "{kind:?}: the forwarded body is written differently"
                    );
                }
                Err(error) => panic!(
                    "{kind:?}: accepted {:?} but refused its own output {:?}: {error:?}",
                    String::from_utf8_lossy(data),
                    String::from_utf8_lossy(&written)
                ),
            }
        }
    }
});
