//! The `ferroformers` command end to end: JSON Lines shapes and values, stdin, exit codes.
//! Every run is offline with its own Hub cache, so nothing reaches the network.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{assert_same_len, fixture, fixture_model};
use serde_json::Value;

fn ferroformers(args: &[&str], stdin: Option<&str>) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroformers"))
        .args(args)
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Successful run: its JSON lines.
fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn references() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("pipelines.json")).unwrap()).unwrap()
}

fn assert_close(ours: &Value, theirs: &Value) {
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) => {
            assert!(
                (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-4,
                "{a} vs {b}"
            )
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).for_each(|(x, y)| assert_close(x, y));
        }
        (Value::Object(a), Value::Object(b)) => {
            assert_eq!(a.len(), b.len(), "{ours} vs {theirs}");
            a.iter().for_each(|(k, v)| assert_close(v, &b[k]));
        }
        _ => assert_eq!(ours, theirs),
    }
}

#[test]
fn classify_prints_one_json_array_per_input_in_order() {
    let refs = references();
    let case = &refs["text_classification"]["bert"];
    let texts: Vec<&str> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let model = fixture_model("bert/sequence-classification");
    let mut args = vec!["classify", "-m", &model, "--json"];
    args.extend(&texts);
    let lines = json_lines(&ferroformers(&args, None));
    assert_eq!(lines.len(), texts.len());
    let expected = case["all"].as_array().unwrap();
    assert_same_len(&lines, expected, "one line per text");
    for (line, expected) in lines.iter().zip(expected) {
        assert_close(line, expected);
    }
}

#[test]
fn texts_come_from_stdin_one_per_line() {
    let model = fixture_model("bert/sequence-classification");
    let refs = references();
    let case = &refs["text_classification"]["bert"];
    let stdin: String = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}\n", t.as_str().unwrap()))
        .collect();
    let lines = json_lines(&ferroformers(
        &["classify", "-m", &model, "--json", "--top-k", "1", "-"],
        Some(&stdin),
    ));
    assert_eq!(lines.len(), 3);
    let expected = case["top_1"].as_array().unwrap();
    assert_same_len(&lines, expected, "one line per stdin line");
    for (line, expected) in lines.iter().zip(expected) {
        assert_close(line, expected);
    }
}

#[test]
fn fill_mask_json_has_transformers_fields() {
    let refs = references();
    let case = &refs["fill_mask"]["roberta"];
    let model = fixture_model("roberta/masked-lm");
    let lines = json_lines(&ferroformers(
        &[
            "fill-mask",
            "-m",
            &model,
            "--json",
            case["text"].as_str().unwrap(),
        ],
        None,
    ));
    assert_eq!(lines.len(), 1);
    assert_close(&lines[0], &case["default"]);
}

#[test]
fn ner_json_groups_by_default_and_lists_tokens_with_none() {
    let refs = references();
    let case = &refs["token_classification"]["bert"];
    let model = fixture_model("bert/token-classification");
    let text = case["texts"][0].as_str().unwrap();
    let grouped = json_lines(&ferroformers(&["ner", "-m", &model, "--json", text], None));
    assert_close(&grouped[0], &case["simple"][0]);
    let tokens = json_lines(&ferroformers(
        &["ner", "-m", &model, "--json", "--aggregation", "none", text],
        None,
    ));
    assert_close(&tokens[0], &case["none"][0]);
    assert!(tokens[0][0].get("index").is_some() && tokens[0][0].get("entity").is_some());
}

#[test]
fn qa_json_is_one_answer() {
    let refs = references();
    let case = &refs["question_answering"]["bert"];
    let model = fixture_model("bert/question-answering");
    let args = [
        "qa",
        "-m",
        &model,
        "--json",
        "--question",
        case["question"].as_str().unwrap(),
        "--context",
        case["context"].as_str().unwrap(),
    ];
    let lines = json_lines(&ferroformers(&args, None));
    assert_close(&lines[0], &case["default"]);
}

#[test]
fn generate_json_gives_full_text_and_new_token_ids() {
    let refs = references();
    let case = &refs["text_generation"];
    let model = fixture_model("gpt2/lm-head");
    let prompt = case["prompts"][0].as_str().unwrap();
    let lines = json_lines(&ferroformers(
        &[
            "generate",
            "-m",
            &model,
            "--json",
            "--max-new-tokens",
            "20",
            prompt,
        ],
        None,
    ));
    assert_eq!(
        lines[0]["generated_text"],
        case["greedy"][0][0]["generated_text"]
    );
    assert_eq!(
        lines[0]["generated_token_ids"].as_array().unwrap().len(),
        20
    );
}

#[test]
fn generate_streams_plain_text_without_json() {
    let model = fixture_model("gpt2/lm-head");
    let refs = references();
    let prompt = refs["text_generation"]["prompts"][0].as_str().unwrap();
    let output = ferroformers(
        &["generate", "-m", &model, "--max-new-tokens", "20", prompt],
        None,
    );
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text.trim_end_matches('\n'),
        refs["text_generation"]["greedy"][0][0]["generated_text"]
            .as_str()
            .unwrap()
    );
}

#[test]
fn embed_json_is_an_array_of_floats_per_input() {
    let folder = fixture("bert/sentence-transformers");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap())
            .unwrap();
    let model = folder.to_string_lossy().into_owned();
    let first = reference["sentences"][0].as_str().unwrap();
    let second = reference["sentences"][1].as_str().unwrap();
    let lines = json_lines(&ferroformers(
        &["embed", "-m", &model, "--json", first, second],
        None,
    ));
    assert_eq!(lines.len(), 2);
    assert_close(&lines[0], &reference["mean"][0]);
    assert_close(&lines[1], &reference["mean"][1]);
}

fn assert_one_line_error(output: &Output, code: i32, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn unknown_model_is_one_line_on_stderr_and_exit_1() {
    let output = ferroformers(&["classify", "-m", "nobody/no-such-model", "hello"], None);
    assert_one_line_error(&output, 1, "no-such-model");
}

#[test]
fn unknown_flag_is_one_line_on_stderr_and_exit_2() {
    let output = ferroformers(&["classify", "--no-such-flag"], None);
    assert_one_line_error(&output, 2, "--no-such-flag");
}

#[test]
fn empty_stdin_is_an_error() {
    let model = fixture_model("bert/sequence-classification");
    let output = ferroformers(&["classify", "-m", &model], Some(""));
    assert_one_line_error(&output, 1, "no input");
}

#[test]
fn a_wrong_task_for_the_architecture_is_an_error() {
    let model = fixture_model("gpt2/lm-head");
    let output = ferroformers(
        &["qa", "-m", &model, "--question", "q", "--context", "c"],
        None,
    );
    assert_one_line_error(&output, 1, "gpt2");
}

/// `bench --generate --against`: both dtypes timed in one process, run by run; the paired
/// ratios are the second's speed over the first's, one per timed run, and their median.
#[test]
fn bench_against_pairs_the_runs_of_two_dtypes() {
    let model = fixture_model("gpt2/lm-head");
    let args = [
        "bench",
        "-m",
        &model,
        "--generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "3",
        "--runs",
        "3",
        "--dtype",
        "f32",
        "--against",
        "int8",
        "--json",
    ];
    let lines = json_lines(&ferroformers(&args, None));
    assert_eq!(lines.len(), 1);
    let paired = &lines[0];
    let (first, second) = (&paired["first"], &paired["second"]);
    assert_eq!(
        (first["dtype"].as_str(), second["dtype"].as_str()),
        (Some("f32"), Some("int8"))
    );
    let numbers = |array: &Value| -> Vec<f64> {
        array
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (
        numbers(&first["decode_runs"]),
        numbers(&second["decode_runs"]),
    );
    assert_eq!((a.len(), b.len()), (3, 3));
    let ratios = numbers(&paired["ratios"]);
    assert_same_len(&ratios, &a, "one ratio per paired run");
    for ((ratio, a), b) in ratios.iter().zip(&a).zip(&b) {
        assert!((ratio - b / a).abs() < 1e-9 * ratio.abs());
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(paired["ratio"].as_f64(), Some(sorted[1]));
    // int8 weights: a quarter of f32's bytes, plus one f32 scale per output channel.
    let bytes = |report: &Value| report["weight_bytes_per_token"].as_f64().unwrap();
    assert!(bytes(second) < 0.5 * bytes(first));
}

/// `bench --json` says which instruction set the kernels ran (the one this process's
/// kernels pick, under the same environment) and how much memory the process held: a peak at
/// least as high as what was resident after the load and after the runs, all of it more than
/// the binary's code and less than this machine's memory.
#[test]
fn bench_reports_the_isa_and_resident_memory() {
    let model = fixture_model("bert/base");
    let args = [
        "bench", "-m", &model, "--batch", "2", "--seq", "8", "--runs", "1", "--json",
    ];
    let lines = json_lines(&ferroformers(&args, None));
    assert_eq!(lines.len(), 1);
    let report = &lines[0];
    use ferroformers::kernels::{isa::Isa, kernel_mode, KernelMode};
    let expected = match kernel_mode() {
        KernelMode::Reference => "reference",
        mode => Isa::detect(mode == KernelMode::Portable).name(),
    };
    assert_eq!(report["isa"].as_str(), Some(expected), "{report}");
    let bytes = |field: &str| report[field].as_u64();
    if cfg!(target_os = "linux") {
        let (peak, loaded, after) = (
            bytes("peak_rss_bytes").unwrap(),
            bytes("rss_after_load_bytes").unwrap(),
            bytes("rss_after_runs_bytes").unwrap(),
        );
        let total = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total_kb: u64 = total.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(loaded >= 1 << 20 && after >= 1 << 20, "{report}");
        assert!(
            peak >= loaded && peak >= after && peak < total_kb * 1024,
            "{report}"
        );
    } else {
        assert!(report["peak_rss_bytes"].is_null(), "{report}");
    }
}

#[test]
fn against_needs_generate() {
    let model = fixture_model("gpt2/lm-head");
    let output = ferroformers(&["bench", "-m", &model, "--against", "int8"], None);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn warnings_go_to_stderr_and_quiet_silences_them() {
    // bert/base has no sentence-transformers files: embed falls back to mean pooling, a warning.
    let model = fixture_model("bert/base");
    let loud = ferroformers(&["embed", "-m", &model, "--json", "hello world"], None);
    let quiet = ferroformers(
        &[
            "embed",
            "-m",
            &model,
            "--json",
            "--quiet",
            "--threads",
            "1",
            "hello world",
        ],
        None,
    );
    let stderr = String::from_utf8(loud.stderr.clone()).unwrap();
    assert!(
        stderr.contains("WARN") && stderr.contains("mean pooling"),
        "{stderr:?}"
    );
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    // One thread computes the same vector.
    let (loud, quiet) = (json_lines(&loud), json_lines(&quiet));
    assert_eq!(loud.len(), 1);
    assert_close(&quiet[0], &loud[0]);
}

#[test]
fn threads_must_be_at_least_one() {
    let model = fixture_model("bert/base");
    let output = ferroformers(&["embed", "-m", &model, "--threads", "0", "hi"], None);
    assert_eq!(output.status.code(), Some(2));
}
