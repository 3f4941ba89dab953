//! The reader on files written here byte by byte: a well-formed one read back whole, and each
//! way a file can lie refused with an error that says what is wrong.

use super::*;

/// A GGUF file in the making: header fields, then metadata and tensor entries as raw bytes.
struct Writer {
    version: u32,
    metadata: Vec<u8>,
    metadata_count: u64,
    tensors: Vec<u8>,
    tensor_count: u64,
    data: Vec<u8>,
}

impl Writer {
    fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            metadata_count: 0,
            tensors: Vec::new(),
            tensor_count: 0,
            data: Vec::new(),
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn kv(mut self, key: &str, kind: u32, value: &[u8]) -> Self {
        Self::string(&mut self.metadata, key);
        self.metadata.extend(kind.to_le_bytes());
        self.metadata.extend(value);
        self.metadata_count += 1;
        self
    }

    fn kv_string(self, key: &str, value: &str) -> Self {
        let mut bytes = Vec::new();
        Self::string(&mut bytes, value);
        self.kv(key, 8, &bytes)
    }

    /// A tensor entry at `offset` in the data; its bytes are appended to the data section
    /// when `data` is given.
    fn tensor(mut self, name: &str, dims: &[u64], kind: u32, offset: u64, data: &[u8]) -> Self {
        Self::string(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(kind.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.tensor_count += 1;
        self.data.extend(data);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.metadata_count.to_le_bytes());
        out.extend(&self.metadata);
        out.extend(&self.tensors);
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(&self.data);
        out
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Two tensors, an F32 vector and a Q8_0 row, with metadata of several types.
fn good() -> Writer {
    let mut tokens = Vec::new();
    tokens.extend(8u32.to_le_bytes());
    tokens.extend(2u64.to_le_bytes());
    Writer::string(&mut tokens, "a");
    Writer::string(&mut tokens, "b");
    let mut q8 = vec![0u8; 34];
    q8[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    q8[2] = 3;
    Writer::new()
        .kv_string("general.architecture", "llama")
        .kv("llama.block_count", 4, &2u32.to_le_bytes())
        .kv("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
        .kv("tokenizer.ggml.tokens", 9, &tokens)
        .tensor("norm.weight", &[8], 0, 0, &f32_bytes(&[1.0; 8]))
        .tensor(
            "blk.0.attn_q.weight",
            &[32],
            8,
            32,
            &[&[0u8; 0][..], &q8].concat(),
        )
}

fn error_of(bytes: &[u8]) -> String {
    match GgufHeader::parse(bytes) {
        Err(Error::InvalidWeights(why)) => why,
        other => panic!("expected InvalidWeights, got {other:?}"),
    }
}

#[test]
fn a_well_formed_file_reads_back() {
    let bytes = good().bytes();
    let header = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(header.version, 3);
    assert_eq!(
        header.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(header.get("llama.block_count").unwrap().to_u64(), Some(2));
    assert_eq!(
        header.get("llama.rope.freq_base").unwrap().to_f64(),
        Some(10000.0)
    );
    assert_eq!(
        header.get("tokenizer.ggml.tokens").unwrap(),
        &GgufValue::Array(vec![
            GgufValue::String("a".into()),
            GgufValue::String("b".into())
        ])
    );
    let [norm, q] = &header.tensors[..] else {
        panic!("two tensors expected, got {:?}", header.tensors)
    };
    assert_eq!(
        (norm.ggml_type, norm.bytes, norm.elements()),
        (GgmlType::F32, 32, 8)
    );
    assert_eq!(
        (q.ggml_type, q.bytes, q.elements()),
        (GgmlType::Q8_0, 34, 32)
    );
    assert_eq!(q.start, norm.start + 32);
    assert_eq!(&bytes[norm.start..norm.start + 4], &1f32.to_le_bytes());
    assert_eq!(bytes[q.start + 2], 3);
    assert!(header.get("missing").is_err());
}

#[test]
fn lying_files_are_errors_that_say_what_is_wrong() {
    let good_bytes = good().bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not GGUF", b"GGML\x03\0\0\0".to_vec(), "not a GGUF file"),
        (
            "version 1",
            {
                let mut w = good();
                w.version = 1;
                w.bytes()
            },
            "version 1",
        ),
        ("cut in the header", good_bytes[..20].to_vec(), "cut short"),
        (
            "cut in the data",
            good_bytes[..good_bytes.len() - 1].to_vec(),
            "past the file's end",
        ),
        (
            "a huge metadata count",
            {
                let mut b = good_bytes.clone();
                b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            },
            "entries follow",
        ),
        (
            "a huge tensor count",
            {
                let mut b = good_bytes.clone();
                b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b
            },
            "entries follow",
        ),
        (
            "a string longer than the file",
            Writer::new().kv("k", 8, &u64::MAX.to_le_bytes()).bytes(),
            "entries follow",
        ),
        (
            "an array longer than the file",
            Writer::new()
                .kv(
                    "k",
                    9,
                    &[&4u32.to_le_bytes()[..], &(1u64 << 62).to_le_bytes()].concat(),
                )
                .bytes(),
            "entries follow",
        ),
        (
            "an unknown value type",
            Writer::new().kv("k", 13, &[0; 8]).bytes(),
            "unknown type 13",
        ),
        (
            "a boolean of 2",
            Writer::new().kv("k", 7, &[2]).bytes(),
            "boolean holds 2",
        ),
        (
            "a key twice",
            Writer::new().kv("k", 0, &[1]).kv("k", 0, &[2]).bytes(),
            "appears twice",
        ),
        (
            "arrays nested deep",
            Writer::new()
                .kv(
                    "k",
                    9,
                    &[
                        &9u32.to_le_bytes()[..],
                        &1u64.to_le_bytes(),
                        &9u32.to_le_bytes(),
                        &1u64.to_le_bytes(),
                        &0u32.to_le_bytes(),
                        &0u64.to_le_bytes(),
                    ]
                    .concat(),
                )
                .bytes(),
            "nest deeper",
        ),
        (
            "five dimensions",
            Writer::new()
                .tensor("t", &[1, 1, 1, 1, 1], 0, 0, &[0; 4])
                .bytes(),
            "5 dimensions",
        ),
        (
            "a shape whose size overflows",
            Writer::new()
                .tensor("t", &[1 << 32, 1 << 32, 1 << 32], 0, 0, &[])
                .bytes(),
            "too large",
        ),
        (
            "an unknown ggml type",
            Writer::new().tensor("t", &[32], 99, 0, &[0; 64]).bytes(),
            "ggml type 99",
        ),
        (
            "a row not a whole number of blocks",
            Writer::new().tensor("t", &[16], 8, 0, &[0; 34]).bytes(),
            "not a multiple of its blocks",
        ),
        (
            "an offset past the end",
            Writer::new()
                .tensor("t", &[8], 0, 1 << 40, &[0; 32])
                .bytes(),
            "past the file's end",
        ),
        (
            "an offset out of alignment",
            Writer::new().tensor("t", &[1], 0, 4, &[0; 8]).bytes(),
            "alignment",
        ),
        (
            "overlapping tensors",
            Writer::new()
                .tensor("a", &[16], 0, 0, &[0; 64])
                .tensor("b", &[16], 0, 32, &[0; 32])
                .bytes(),
            "overlap",
        ),
        (
            "a tensor twice",
            Writer::new()
                .tensor("a", &[8], 0, 0, &[0; 32])
                .tensor("a", &[8], 0, 32, &[0; 32])
                .bytes(),
            "appears twice",
        ),
        (
            "an alignment of 3",
            Writer::new()
                .kv("general.alignment", 4, &3u32.to_le_bytes())
                .bytes(),
            "power of two",
        ),
    ];
    for (what, bytes, expected) in cases {
        let why = error_of(&bytes);
        assert!(
            why.contains(expected),
            "{what}: `{why}` does not say `{expected}`"
        );
    }
}

/// Every type we dequantize against the `gguf` package's `dequantize` (llama.cpp's gguf-py) on
/// random blocks (tests/fixtures/gguf/dequantize.safetensors, made by make_fixtures.py
/// `--only gguf`): bit for bit.
#[test]
fn dequantized_values_are_the_gguf_packages_bit_for_bit() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf/dequantize.safetensors"
    );
    let file = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for ggml_type in types {
        let name = format!("{ggml_type:?}");
        let blocks = tensors.tensor(&format!("{name}.blocks")).unwrap();
        let values: Vec<f32> = tensors
            .tensor(&format!("{name}.values"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert!(
            !values.is_empty() && values.iter().all(|v| v.is_finite()),
            "{name}: fixture"
        );
        let mut ours = vec![f32::NAN; values.len()];
        dequantize(ggml_type, blocks.data(), &mut ours).unwrap();
        for (i, (a, b)) in ours.iter().zip(&values).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}: value {i}: {a} against {b}"
            );
        }
    }
    // Data that does not fill whole blocks is an error, not a panic.
    let mut out = [0f32; 32];
    assert!(dequantize(GgmlType::Q8_0, &[0; 33], &mut out).is_err());
}

#[test]
fn written_files_read_back_whole() {
    let scratch = tempfile::tempdir().unwrap();
    let folder = scratch.path();
    let path = folder.join("every-type.gguf");
    let metadata: Vec<(String, GgufValue)> = [
        GgufValue::U8(1),
        GgufValue::I8(-2),
        GgufValue::U16(3),
        GgufValue::I16(-4),
        GgufValue::U32(5),
        GgufValue::I32(-6),
        GgufValue::F32(0.5),
        GgufValue::Bool(true),
        GgufValue::String("ünïcode".into()),
        GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
        GgufValue::Array(Vec::new()),
        GgufValue::U64(1 << 40),
        GgufValue::I64(-(1 << 40)),
        GgufValue::F64(0.25),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, value)| (format!("key.{i}"), value))
    .collect();
    let tensors = vec![
        PlannedTensor {
            name: "a".into(),
            dims: vec![3],
            ggml_type: GgmlType::F32,
        },
        PlannedTensor {
            name: "b".into(),
            dims: vec![32, 2],
            ggml_type: GgmlType::Q8_0,
        },
    ];
    let data = |t: &PlannedTensor| Ok(vec![t.name.as_bytes()[0]; t.bytes()?]);
    write_gguf(&path, &metadata, &tensors, data).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(header.version, 3);
    assert_eq!(header.metadata, metadata.into_iter().collect());
    for (read, planned) in header.tensors.iter().zip(&tensors) {
        assert_eq!(
            (&read.name, &read.dims, read.ggml_type),
            (&planned.name, &planned.dims, planned.ggml_type)
        );
        assert_eq!(read.start % DEFAULT_ALIGNMENT, 0);
        assert!(bytes[read.start..read.start + read.bytes]
            .iter()
            .all(|&b| b == planned.name.as_bytes()[0]));
    }
    assert_eq!(header.tensors[1].bytes, 2 * 34);

    // What a reader would refuse is not written, and no file is left behind.
    let refused = folder.join("refused.gguf");
    let twice = vec![
        ("k".to_string(), GgufValue::U8(1)),
        ("k".to_string(), GgufValue::U8(2)),
    ];
    let error = write_gguf(&refused, &twice, &[], data)
        .unwrap_err()
        .to_string();
    assert!(error.contains("`k` is written twice"), "{error}");
    let short = |_: &PlannedTensor| Ok(vec![0u8; 5]);
    let error = write_gguf(&refused, &[], &tensors, short)
        .unwrap_err()
        .to_string();
    assert!(error.contains("came to 5 bytes"), "{error}");
    let ragged = [PlannedTensor {
        name: "c".into(),
        dims: vec![30],
        ggml_type: GgmlType::Q4_0,
    }];
    let error = write_gguf(&refused, &[], &ragged, data)
        .unwrap_err()
        .to_string();
    assert!(error.contains("whole blocks of 32"), "{error}");
    let mixed = [(
        "m".to_string(),
        GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]),
    )];
    assert!(write_gguf(&refused, &mixed, &[], data).is_err());
    assert!(!refused.exists() && !folder.join("refused.gguf.partial").exists());
}
