//! Which downloaded images the agent accepts: pure verdicts, table-tested.
//!
//! Only `raw` and `qcow2` are accepted. A qcow2 must stand alone: no backing file, no
//! external data file and no encryption, because each makes QEMU open something other than
//! the verified bytes (a host file, a key). Everything else qemu-img recognises (vmdk with
//! its extents, luks, vhdx, ...) is refused. Two independent checks: [`qcow2_header`]
//! reads the qcow2 header bytes before qemu-img sees the file, and [`verdict`] judges
//! `qemu-img info --output=json` (which the image cache runs under resource limits, see
//! [`QEMU_IMG_LIMITS`]).

use serde_json::Value;

/// `prlimit` arguments for `qemu-img info` on untrusted bytes: 1 GiB of address space and
/// 30 s of CPU (as OpenStack does since CVE-2015-5162).
pub const QEMU_IMG_LIMITS: [&str; 2] = ["--as=1073741824", "--cpu=30"];

/// An accepted image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    pub fn parse(s: &str) -> Option<ImageFormat> {
        match s {
            "raw" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            _ => None,
        }
    }
}

/// Why an image is refused (`image_format_refused`) or could not be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("format {0:?} is not accepted; only raw and qcow2 images are")]
    NotAllowed(String),
    #[error("the image is {detected}, but {declared} was declared")]
    Mismatch {
        declared: &'static str,
        detected: String,
    },
    #[error("qcow2 image names a backing file ({0:?}); images must stand alone")]
    BackingFile(String),
    #[error("qcow2 image has an external data file ({0:?}); images must stand alone")]
    DataFile(String),
    #[error("qcow2 image is encrypted")]
    Encrypted,
    #[error("qemu-img info output has no {0}")]
    Incomplete(&'static str),
}

impl FormatError {
    /// True for refusals of the image itself (as opposed to an unreadable qemu-img answer).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, FormatError::Incomplete(_))
    }
}

/// The accepted format and guest-visible size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub format: ImageFormat,
    pub virtual_size: u64,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 v3 incompatible feature bit: the guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks the first bytes of a file that claims to be qcow2 (magic `QFI\xfb`): refuses a
/// backing file, encryption and an external data file from the header alone. Other files
/// pass (they are judged by [`verdict`]).
pub fn qcow2_header(head: &[u8]) -> Result<(), FormatError> {
    if !head.starts_with(QCOW2_MAGIC) {
        return Ok(());
    }
    let version = be_u32(head, 4).ok_or(FormatError::Incomplete("qcow2 header"))?;
    let backing_offset = be_u64(head, 8).ok_or(FormatError::Incomplete("qcow2 header"))?;
    if backing_offset != 0 {
        return Err(FormatError::BackingFile("named in the header".into()));
    }
    let crypt_method = be_u32(head, 32).ok_or(FormatError::Incomplete("qcow2 header"))?;
    if crypt_method != 0 {
        return Err(FormatError::Encrypted);
    }
    if version >= 3 {
        let incompatible = be_u64(head, 72).ok_or(FormatError::Incomplete("qcow2 header"))?;
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(FormatError::DataFile("flagged in the header".into()));
        }
    }
    Ok(())
}

/// Judges `qemu-img info --output=json` of a downloaded image; `declared` is the format
/// the image is expected to have, if any.
pub fn verdict(info: &Value, declared: Option<ImageFormat>) -> Result<Verdict, FormatError> {
    let detected = info["format"]
        .as_str()
        .ok_or(FormatError::Incomplete("format"))?;
    let format =
        ImageFormat::parse(detected).ok_or_else(|| FormatError::NotAllowed(detected.into()))?;
    if let Some(declared) = declared {
        if declared != format {
            return Err(FormatError::Mismatch {
                declared: declared.as_str(),
                detected: detected.into(),
            });
        }
    }
    for key in ["backing-filename", "full-backing-filename"] {
        if let Some(name) = info.get(key) {
            return Err(FormatError::BackingFile(
                name.as_str().unwrap_or_default().into(),
            ));
        }
    }
    if info["encrypted"].as_bool() == Some(true) {
        return Err(FormatError::Encrypted);
    }
    let specific = &info["format-specific"]["data"];
    if let Some(data_file) = specific.get("data-file") {
        return Err(FormatError::DataFile(
            data_file.as_str().unwrap_or_default().into(),
        ));
    }
    if specific.get("encrypt").is_some() {
        return Err(FormatError::Encrypted);
    }
    let virtual_size = info["virtual-size"]
        .as_u64()
        .ok_or(FormatError::Incomplete("virtual-size"))?;
    Ok(Verdict {
        format,
        virtual_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Case = (
        &'static str,
        Value,
        Option<ImageFormat>,
        Result<Verdict, FormatError>,
    );

    #[test]
    fn verdict_table() {
        let qcow2 = |data: Value| {
            json!({"format": "qcow2", "virtual-size": 1048576,
                   "format-specific": {"type": "qcow2", "data": data}})
        };
        let ok = |format, virtual_size| {
            Ok(Verdict {
                format,
                virtual_size,
            })
        };
        let table: Vec<Case> = vec![
            (
                "plain raw",
                json!({"format": "raw", "virtual-size": 512}),
                None,
                ok(ImageFormat::Raw, 512),
            ),
            (
                "plain qcow2",
                qcow2(json!({"compat": "1.1"})),
                None,
                ok(ImageFormat::Qcow2, 1048576),
            ),
            (
                "declared match",
                qcow2(json!({})),
                Some(ImageFormat::Qcow2),
                ok(ImageFormat::Qcow2, 1048576),
            ),
            (
                "declared mismatch",
                json!({"format": "raw", "virtual-size": 512}),
                Some(ImageFormat::Qcow2),
                Err(FormatError::Mismatch {
                    declared: "qcow2",
                    detected: "raw".into(),
                }),
            ),
            (
                "vmdk",
                json!({"format": "vmdk", "virtual-size": 512}),
                None,
                Err(FormatError::NotAllowed("vmdk".into())),
            ),
            (
                "luks",
                json!({"format": "luks", "virtual-size": 512, "encrypted": true}),
                None,
                Err(FormatError::NotAllowed("luks".into())),
            ),
            (
                "backing file",
                json!({"format": "qcow2", "virtual-size": 1, "backing-filename": "/etc/shadow"}),
                None,
                Err(FormatError::BackingFile("/etc/shadow".into())),
            ),
            (
                "data file",
                qcow2(json!({"data-file": "/etc/shadow", "data-file-raw": false})),
                None,
                Err(FormatError::DataFile("/etc/shadow".into())),
            ),
            (
                "encrypted flag",
                json!({"format": "qcow2", "virtual-size": 1, "encrypted": true}),
                None,
                Err(FormatError::Encrypted),
            ),
            (
                "encrypt block",
                qcow2(json!({"encrypt": {"format": "luks"}})),
                None,
                Err(FormatError::Encrypted),
            ),
            (
                "no format",
                json!({"virtual-size": 1}),
                None,
                Err(FormatError::Incomplete("format")),
            ),
            (
                "no size",
                json!({"format": "raw"}),
                None,
                Err(FormatError::Incomplete("virtual-size")),
            ),
        ];
        for (name, info, declared, want) in table {
            assert_eq!(verdict(&info, declared), want, "{name}");
        }
    }

    fn header(version: u32, backing: u64, crypt: u32, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_header_table() {
        let table: Vec<(&str, Vec<u8>, Result<(), FormatError>)> = vec![
            ("not qcow2", b"\xfa\x31\xc0 boot sector".to_vec(), Ok(())),
            ("empty", Vec::new(), Ok(())),
            ("plain v3", header(3, 0, 0, 0), Ok(())),
            ("plain v2", header(2, 0, 0, INCOMPAT_DATA_FILE), Ok(())),
            (
                "backing",
                header(3, 0x200, 0, 0),
                Err(FormatError::BackingFile("named in the header".into())),
            ),
            ("aes", header(2, 0, 1, 0), Err(FormatError::Encrypted)),
            (
                "data file",
                header(3, 0, 0, INCOMPAT_DATA_FILE | 1),
                Err(FormatError::DataFile("flagged in the header".into())),
            ),
            (
                "truncated",
                header(3, 0, 0, 0)[..20].to_vec(),
                Err(FormatError::Incomplete("qcow2 header")),
            ),
        ];
        for (name, bytes, want) in table {
            assert_eq!(qcow2_header(&bytes), want, "{name}");
        }
    }
}
