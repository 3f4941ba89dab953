//! Vetting `pytorch_model.bin` before it is read: a PyTorch checkpoint is a zip holding a
//! pickle, and a pickle can name any Python callable. candle's reader never runs code, but we
//! accept only what a plain state dict of tensors contains, and refuse anything else up front.
//!
//! The pickle is walked opcode by opcode; every global it names must be on the allowlist, and
//! an opcode outside the set `torch.save` emits is refused too.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The callables a plain state dict of tensors references.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Refuse `path` unless its pickle is a plain tensor state dict.
pub(crate) fn check_torch_checkpoint(path: &Path) -> Result<()> {
    let refuse = |why: String| {
        Error::InvalidWeights(format!(
            "{} was refused: {why}. Only plain tensor checkpoints are loaded; convert it to \
             safetensors, or use a repository that has model.safetensors",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| refuse(format!("it is not a PyTorch zip archive ({e})")))?;
    let name = archive
        .file_names()
        .filter_map(|name| name.ok().map(|n| n.into_owned()))
        .find(|name| name.ends_with("/data.pkl") || name == "data.pkl")
        .ok_or_else(|| refuse("the archive holds no data.pkl".to_string()))?;
    let mut pickle = Vec::new();
    archive
        .by_name(&name)
        .and_then(|mut entry| entry.read_to_end(&mut pickle).map_err(Into::into))
        .map_err(|e| refuse(format!("cannot read {name} ({e})")))?;
    check_pickle(&pickle).map_err(refuse)
}

/// Walk the opcodes of `data`; `Err` says what is not allowed.
pub(crate) fn check_pickle(data: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0usize;
    // The last two strings pushed, for STACK_GLOBAL (module, then name).
    let mut strings: [Option<String>; 2] = [None, None];
    let take = |at: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&end| end <= data.len())
            .ok_or("the pickle is truncated")?;
        let bytes = &data[*at..end];
        *at = end;
        Ok(bytes)
    };
    let length = |bytes: &[u8]| -> usize {
        bytes.iter().rev().fold(0usize, |acc, &b| {
            acc.saturating_mul(256).saturating_add(b as usize)
        })
    };
    loop {
        let opcode = *take(&mut at, 1)?.first().ok_or("the pickle is truncated")?;
        let mut pushed_string = None;
        match opcode {
            b'.' => return Ok(()),
            // No argument.
            b'(' | b'}' | b']' | b')' | b't' | 0x85 | 0x86 | 0x87 | b'l' | b'd' | b'N' | 0x88
            | 0x89 | b'Q' | b'R' | b'b' | b's' | b'u' | b'a' | b'e' | 0x94 | b'0' | b'1' | b'2'
            | 0x8f | 0x90 => {}
            // Fixed-size arguments.
            0x80 | b'K' | b'q' | b'h' => {
                take(&mut at, 1)?;
            }
            b'M' => {
                take(&mut at, 2)?;
            }
            b'J' | b'r' | b'j' => {
                take(&mut at, 4)?;
            }
            b'G' | 0x95 => {
                take(&mut at, 8)?;
            }
            // Length-prefixed arguments: (bytes of length, is text).
            0x8a | 0x8b | b'X' | 0x8c | 0x8d | b'C' | b'B' | 0x8e | b'U' | b'T' => {
                let (size, text) = match opcode {
                    0x8a => (1, false),
                    0x8b => (4, false),
                    b'X' => (4, true),
                    0x8c => (1, true),
                    0x8d => (8, true),
                    b'C' => (1, false),
                    b'B' => (4, false),
                    0x8e => (8, false),
                    b'U' => (1, true),
                    _ => (4, true),
                };
                let n = length(take(&mut at, size)?);
                let bytes = take(&mut at, n)?;
                if text {
                    pushed_string = Some(String::from_utf8_lossy(bytes).into_owned());
                }
            }
            b'c' => {
                let module = read_line(data, &mut at)?;
                let name = read_line(data, &mut at)?;
                check_global(&module, &name)?;
            }
            0x93 => match &strings {
                [Some(module), Some(name)] => check_global(module, name)?,
                _ => return Err("it builds a global from computed names".to_string()),
            },
            other => {
                return Err(format!(
                    "it uses pickle opcode 0x{other:02x}, which a tensor state dict does not"
                ))
            }
        }
        match pushed_string {
            Some(s) => strings = [strings[1].take(), Some(s)],
            // Memo opcodes leave the last pushed string on top of the stack.
            None if matches!(opcode, b'q' | b'r' | 0x94 | 0x80 | 0x95) => {}
            None => strings = [None, None],
        }
    }
}

fn read_line(data: &[u8], at: &mut usize) -> std::result::Result<String, String> {
    let rest = data.get(*at..).ok_or("the pickle is truncated")?;
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("the pickle is truncated")?;
    *at += end + 1;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn check_global(module: &str, name: &str) -> std::result::Result<(), String> {
    if ALLOWED_GLOBALS.contains(&(module, name)) {
        Ok(())
    } else {
        Err(format!(
            "its pickle calls `{module}.{name}`, which a tensor state dict does not need"
        ))
    }
}
