//! The `ferroformers` command end to end: JSON Lines shapes and values, stdin, exit codes.
//! Every run is offline with its own Hub cache, so nothing reaches the network.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{assert_json_close, assert_same_len, fixture, fixture_json, fixture_model};
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
    fixture_json("pipelines.json")
}

/// The CLI's JSON against a reference: every number within 1e-4 (f32) and finite.
fn assert_close(ours: &Value, theirs: &Value) {
    assert_json_close(ours, theirs, 1e-4, "json");
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
fn convert_writes_a_gguf_file_that_generates_as_the_checkpoint() {
    // Q8_0: the Qwen2 fixture's tied head makes the file the checkpoint at --dtype q8_0.
    let model = fixture_model("qwen2/lm-head");
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("qwen2-q8_0.gguf");
    let file = file.to_str().unwrap();
    let output = ferroformers(
        &[
            "convert",
            "-m",
            &model,
            "--outtype",
            "q8_0",
            "--outfile",
            file,
        ],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout).unwrap();
    assert!(listing.contains("blk.0.attn_q.weight: q8_0"), "{listing}");
    assert!(listing.contains("blk.0.attn_q.bias: f32"), "{listing}");
    let generated = |model: &str| {
        let lines = json_lines(&ferroformers(
            &[
                "generate",
                "-m",
                model,
                "--dtype",
                "q8_0",
                "--json",
                "--max-new-tokens",
                "12",
                "Hello",
            ],
            None,
        ));
        lines[0]["generated_token_ids"].clone()
    };
    let from_file = generated(file);
    assert_eq!(from_file.as_array().map(Vec::len), Some(12));
    assert_eq!(from_file, generated(&model));
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

/// SPLADE vectors print as `/embed_sparse`'s entries: a SparseEncoder without asking, a plain
/// masked LM with `--pooling splade`; sentence-transformers' values within 1e-5.
#[test]
fn embed_prints_splade_vectors_as_their_non_zero_entries() {
    let reference = fixture_json("splade/reference.json");
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected: Vec<Value> = reference["sparse_encoder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let indices = row["indices"].as_array().unwrap();
            let values = row["values"].as_array().unwrap();
            let entries = indices
                .iter()
                .zip(values)
                .map(|(index, value)| serde_json::json!({ "index": index, "value": value }));
            Value::Array(entries.collect())
        })
        .collect();
    for (model, pooling) in [
        ("splade/sparse-encoder", None),
        ("bert/masked-lm", Some("splade")),
    ] {
        let model = fixture_model(model);
        let mut args = vec!["embed", "-m", &model, "--json"];
        args.extend(pooling.iter().flat_map(|p| ["--pooling", *p]));
        args.extend(&sentences);
        let lines = json_lines(&ferroformers(&args, None));
        assert_same_len(&lines, &expected, "lines");
        for (i, (line, expected)) in lines.iter().zip(&expected).enumerate() {
            assert_json_close(line, expected, 1e-5, &format!("{model}: sentence {i}"));
        }
    }
    let model = fixture_model("splade/sparse-encoder");
    let output = ferroformers(&["embed", "-m", &model, "hello world"], None);
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains("non-zero of 451"), "{summary}");
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

/// A usage error: exit code 2 and clap's whole message on stderr, with each of `needles`.
fn assert_usage_error(output: &Output, needles: &[&str]) {
    assert_eq!(
        output.status.code(),
        Some(2),
        "stdout {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{stderr:?} should mention {needle:?}"
        );
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn unknown_flag_is_a_usage_error_with_the_usage_line() {
    let output = ferroformers(&["classify", "--no-such-flag"], None);
    assert_usage_error(
        &output,
        &["--no-such-flag", "Usage: ferroformers classify", "--help"],
    );
}

#[test]
fn a_missing_argument_is_named_and_exits_2() {
    let output = ferroformers(&["classify", "hello"], None);
    assert_usage_error(&output, &["--model <MODEL>", "Usage:"]);
}

#[test]
fn a_wrong_value_lists_the_allowed_ones() {
    let model = fixture_model("bert/token-classification");
    let output = ferroformers(&["ner", "-m", &model, "--aggregation", "loose", "x"], None);
    assert_usage_error(
        &output,
        &["loose", "none", "simple", "first", "average", "max"],
    );
    let output = ferroformers(&["ner", "-m", &model, "--batch-size", "0", "x"], None);
    assert_usage_error(&output, &["--batch-size", "at least 1"]);
}

#[test]
fn empty_stdin_is_a_usage_error() {
    let model = fixture_model("bert/sequence-classification");
    let output = ferroformers(&["classify", "-m", &model], Some(""));
    assert_usage_error(&output, &["no input", "--help"]);
}

#[test]
fn every_flag_and_positional_has_help_text() {
    for sub in [
        "embed",
        "fill-mask",
        "classify",
        "ner",
        "qa",
        "bench",
        "push",
    ] {
        let output = ferroformers(&[sub, "--help"], None);
        assert!(output.status.success(), "{sub} --help");
        let help = String::from_utf8(output.stdout).unwrap();
        // clap lists each argument on a line indented by two spaces; a documented one has
        // text after its name, on that line or (clap's long layout) the next, indented more.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            // Entries are indented by two spaces exactly; deeper lines are their text.
            let is_entry = line.len() - trimmed.len() == 2
                && (trimmed.starts_with('-') || trimmed.starts_with('['));
            if !is_entry {
                continue;
            }
            let has_text = trimmed
                .split("  ")
                .filter(|part| !part.trim().is_empty())
                .count()
                > 1
                || lines
                    .get(i + 1)
                    .is_some_and(|next| next.starts_with("          "));
            assert!(has_text, "{sub}: no help text for {trimmed:?}");
        }
    }
}

#[test]
fn every_serve_flag_names_its_environment_variable() {
    let output = ferroformers(&["serve", "--help"], None);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // `--help` puts each flag on a line of its own (indented by 2 or 6), its help and
    // `[env: ...]` below it, indented more (as the list of a flag's values).
    let mut flags = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
            let flag = trimmed
                .split([' ', ','])
                .find(|word| word.starts_with("--"));
            flags.push((flag.unwrap_or(trimmed).to_string(), String::new()));
        } else if let Some((_, text)) = flags.last_mut() {
            text.push_str(line);
        }
    }
    // The options every subcommand has but the model are the command line's alone.
    let common = [
        "--revision",
        "--dtype",
        "--device",
        "--threads",
        "--quiet",
        "--help",
    ];
    let mut checked = 0;
    for (flag, text) in &flags {
        if common.contains(&flag.as_str()) {
            continue;
        }
        let variable = match flag.as_str() {
            "--model" => "FERROFORMERS_MODEL_ID".to_string(),
            other => format!(
                "FERROFORMERS_{}",
                other
                    .trim_start_matches('-')
                    .replace('-', "_")
                    .to_uppercase()
            ),
        };
        assert!(
            text.contains(&format!("[env: {variable}")),
            "{flag} has no {variable} in: {text}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "{checked} flags in {help}");
}

#[test]
fn serve_takes_the_task_names_and_refuses_a_chat_it_cannot_hold() {
    let output = ferroformers(&["serve", "-m", "x", "--task", "summarize"], None);
    assert_usage_error(&output, &["summarize", "auto", "classify", "chat"]);
    // A model with neither a chat template nor an end-of-text token to join turns with is
    // refused at start, before it binds: one line, exit 1.
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("gpt2/lm-head")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "generation_config.json" {
            std::fs::copy(&path, folder.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let config = folder.path().join("config.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    settings["eos_token_id"] = Value::Null;
    settings["bos_token_id"] = Value::Null;
    std::fs::write(&config, settings.to_string()).unwrap();
    let model = folder.path().to_string_lossy().into_owned();
    let output = ferroformers(
        &["serve", "-m", &model, "--task", "chat", "--port", "0"],
        None,
    );
    assert_one_line_error(&output, 1, "no end-of-text token");
}

#[test]
fn fill_mask_and_ner_take_several_texts_and_stdin() {
    let refs = references();
    let case = &refs["token_classification"]["bert"];
    let model = fixture_model("bert/token-classification");
    let texts: Vec<&str> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut args = vec!["ner", "-m", &model, "--json"];
    args.extend(&texts);
    let lines = json_lines(&ferroformers(&args, None));
    assert_same_len(&lines, &texts, "one line per text");
    for (line, expected) in lines.iter().zip(case["simple"].as_array().unwrap()) {
        assert_close(line, expected);
    }
    let stdin = format!("{}\n{}\n", texts[0], texts[1]);
    let from_stdin = json_lines(&ferroformers(
        &["ner", "-m", &model, "--json"],
        Some(&stdin),
    ));
    assert_eq!(from_stdin, lines);

    let case = &refs["fill_mask"]["bert"];
    let model = fixture_model("bert/masked-lm");
    let text = case["text"].as_str().unwrap();
    let lines = json_lines(&ferroformers(
        &[
            "fill-mask",
            "-m",
            &model,
            "--json",
            "--batch-size",
            "1",
            text,
            text,
        ],
        None,
    ));
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_close(line, &case["default"]);
    }
}

fn option_references() -> Value {
    fixture_json("pipeline_options.json")
}

#[test]
fn max_length_truncation_and_stride_change_results_as_the_library_does() {
    let refs = option_references();
    let case = &refs["token_classification"]["bert"];
    let model = fixture_model("bert/token-classification");
    let max_length = case["max_length"].to_string();
    let stride = case["stride"].to_string();
    let text = case["texts"][0].as_str().unwrap();
    let windows = json_lines(&ferroformers(
        &[
            "ner",
            "-m",
            &model,
            "--json",
            "--max-length",
            &max_length,
            "--stride",
            &stride,
            text,
        ],
        None,
    ));
    assert_close(&windows[0], &case["simple"][0]);
    let truncated = json_lines(&ferroformers(
        &[
            "ner",
            "-m",
            &model,
            "--json",
            "--max-length",
            &max_length,
            text,
        ],
        None,
    ));
    assert_close(&truncated[0], &case["truncated_simple"][0]);

    let case = &refs["text_classification"]["bert"];
    let model = fixture_model("bert/sequence-classification");
    let text = case["texts"][0].as_str().unwrap();
    let max_length = case["max_length"].to_string();
    let lines = json_lines(&ferroformers(
        &[
            "classify",
            "-m",
            &model,
            "--json",
            "--truncation",
            "--max-length",
            &max_length,
            text,
        ],
        None,
    ));
    assert_close(&lines[0], &case["truncated"][0]);
    // --max-length without --truncation is a usage error, not silently ignored.
    let output = ferroformers(
        &["classify", "-m", &model, "--max-length", "12", text],
        None,
    );
    assert_usage_error(&output, &["--truncation"]);
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

/// `generate` takes several prompts (arguments or stdin lines); `--json` gives one line per
/// prompt with transformers' text, the finish reason as OpenAI names it, and token counts.
#[test]
fn generate_takes_several_prompts_and_reports_reasons_and_counts() {
    let refs = references();
    let case = &refs["text_generation"];
    let model = fixture_model("gpt2/lm-head");
    let prompts: Vec<&str> = case["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let mut args = vec!["generate", "-m", &model, "--json", "--max-new-tokens", "20"];
    args.extend(&prompts);
    let from_args = json_lines(&ferroformers(&args, None));
    let stdin: String = prompts.iter().map(|p| format!("{p}\n")).collect();
    let from_stdin = json_lines(&ferroformers(&args[..6], Some(&stdin)));
    assert_eq!(from_args, from_stdin, "arguments and stdin lines alike");
    assert_same_len(&from_args, &prompts, "one line per prompt");
    for (i, line) in from_args.iter().enumerate() {
        assert_eq!(
            line["generated_text"],
            case["greedy"][i][0]["generated_text"]
        );
        assert_eq!(line["finish_reason"], "length");
        assert_eq!(line["completion_tokens"], 20);
        assert_eq!(line["generated_token_ids"].as_array().unwrap().len(), 20);
        assert!(line["prompt_tokens"].as_u64().unwrap() >= 1, "{line}");
    }
}

/// A copy of the GPT-2 fixture whose generation_config.json samples.
fn sampling_model() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("gpt2/lm-head")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.path().join(path.file_name().unwrap())).unwrap();
    }
    let config = folder.path().join("generation_config.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    settings["do_sample"] = Value::Bool(true);
    std::fs::write(&config, settings.to_string()).unwrap();
    folder
}

/// `do_sample: true` in generation_config.json makes `generate` sample (seeded runs repeat,
/// and differ from greedy search); `--greedy` and `--do-sample=false` override it.
#[test]
fn generate_follows_do_sample_of_the_model_unless_a_flag_overrides_it() {
    let refs = references();
    let greedy_text = &refs["text_generation"]["greedy"][0][0]["generated_text"];
    let prompt = refs["text_generation"]["prompts"][0].as_str().unwrap();
    let folder = sampling_model();
    let model = folder.path().to_string_lossy().into_owned();
    let run = |extra: &[&str]| -> Value {
        let mut args = vec!["generate", "-m", &model, "--json", "--max-new-tokens", "20"];
        args.extend(extra);
        args.push(prompt);
        json_lines(&ferroformers(&args, None)).remove(0)
    };
    let sampled = run(&["--seed", "3"]);
    assert_eq!(sampled, run(&["--seed", "3"]), "a seed repeats");
    assert_ne!(
        &sampled["generated_text"], greedy_text,
        "the model's do_sample is respected"
    );
    assert_eq!(&run(&["--greedy"])["generated_text"], greedy_text);
    assert_eq!(&run(&["--do-sample=false"])["generated_text"], greedy_text);
    let explicit = run(&["--do-sample", "--seed", "3"]);
    assert_eq!(explicit, sampled);
}

/// Sampling flags without sampling warn on stderr (as transformers warns) and change nothing.
#[test]
fn temperature_without_sampling_warns_and_has_no_effect() {
    let refs = references();
    let prompt = refs["text_generation"]["prompts"][0].as_str().unwrap();
    let model = fixture_model("gpt2/lm-head");
    let output = ferroformers(
        &[
            "generate",
            "-m",
            &model,
            "--json",
            "--max-new-tokens",
            "20",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
            prompt,
        ],
        None,
    );
    let lines = json_lines(&output);
    assert_eq!(
        lines[0]["generated_text"],
        refs["text_generation"]["greedy"][0][0]["generated_text"]
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("warning")
            && stderr.contains("--temperature")
            && stderr.contains("--top-p")
            && stderr.contains("--do-sample"),
        "{stderr:?}"
    );
    // With sampling, no warning.
    let sampled = ferroformers(
        &[
            "generate",
            "-m",
            &model,
            "--json",
            "--max-new-tokens",
            "5",
            "--do-sample",
            "--seed",
            "1",
            "--temperature",
            "0.5",
            prompt,
        ],
        None,
    );
    assert!(sampled.status.success());
    assert!(
        sampled.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&sampled.stderr)
    );
}

/// Every option of `generate` and `chat` has help text: in `-h`, each flag line carries a
/// description, or the line after it does.
#[test]
fn every_generate_and_chat_flag_has_help_text() {
    for command in ["generate", "chat"] {
        let output = ferroformers(&[command, "-h"], None);
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        let mut flags = 0;
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with('-') {
                continue;
            }
            flags += 1;
            // clap puts a long flag's help on the next line, indented further.
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            let same_line = line.trim().split("  ").filter(|s| !s.is_empty()).count() > 1;
            assert!(
                same_line || (!next.is_empty() && !next.starts_with('-')),
                "{command}: no help for {line:?}"
            );
        }
        assert!(flags >= 15, "{command}: {flags} flags in {help}");
    }
}

/// `--top-logprobs` reports log-probabilities in the JSON lines: one per new token, each
/// with that many best tokens, none above 0.
#[test]
fn generate_json_reports_logprobs_when_asked() {
    let model = fixture_model("gpt2/lm-head");
    let lines = json_lines(&ferroformers(
        &[
            "generate",
            "-m",
            &model,
            "--json",
            "--max-new-tokens",
            "4",
            "--top-logprobs",
            "3",
            "Hello",
        ],
        None,
    ));
    let logprobs = lines[0]["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 4);
    for entry in logprobs {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let chosen = entry["logprob"].as_f64().unwrap();
        let best = top[0]["logprob"].as_f64().unwrap();
        // Greedy search chooses the best token.
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-6, "{entry}");
    }
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

#[test]
fn unreadable_stdin_is_one_line_on_stderr() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroformers"))
        .args([
            "classify",
            "-m",
            &fixture_model("bert/sequence-classification"),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"valid line\n\xff\xfe not utf-8\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("stdin"), "{stderr:?}");
}

/// `train` fine-tunes the fixture BERT on a JSON Lines file, prints one JSON line per epoch
/// with its evaluation, and leaves a folder that `classify` runs with the file's labels.
#[test]
fn train_fine_tunes_on_a_file_and_the_saved_model_classifies() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("train.jsonl");
    let rows: Vec<String> = (0..24)
        .map(|i| {
            let (text, label) = match i % 2 {
                0 => ("the quick brown fox", "animal"),
                _ => ("hello world of the city", "place"),
            };
            serde_json::json!({"text": text, "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let output = folder.path().join("model");
    let model = fixture_model("bert/base");
    let train = ferroformers(
        &[
            "train",
            "-m",
            &model,
            "--quiet",
            "--task",
            "classification",
            "--train",
            data.to_str().unwrap(),
            "--eval-fraction",
            "0.25",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--learning-rate",
            "1e-3",
            "--json",
            "-o",
            output.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let epochs = json_lines(&train);
    assert_eq!(epochs.len(), 2);
    for (i, epoch) in epochs.iter().enumerate() {
        assert_eq!(epoch["epoch"], i + 1);
        assert!(epoch["train_loss"].as_f64().unwrap().is_finite());
        let accuracy = epoch["evaluation"]["metrics"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["id2label"]["0"], "animal");
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    let classify = ferroformers(
        &[
            "classify",
            "-m",
            output.to_str().unwrap(),
            "--json",
            "the quick brown fox",
        ],
        None,
    );
    assert!(
        classify.status.success(),
        "{}",
        String::from_utf8_lossy(&classify.stderr)
    );
    let label = json_lines(&classify)[0][0]["label"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(label == "animal" || label == "place", "{label}");
}
