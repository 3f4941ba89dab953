//! Chat templates from `tokenizer_config.json`, rendered as transformers renders them: Jinja2
//! with `trim_blocks` and `lstrip_blocks`, loop controls, Python's string methods, a `tojson`
//! that writes JSON as Python's `json.dumps` does, `raise_exception`, and the tokenizer's
//! special tokens (`bos_token`, `eos_token`, ...) beside `messages` and
//! `add_generation_prompt`.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/utils/chat_template_utils.py#L393>
//!
//! `{% generation %}` blocks (the tag of transformers' assistant masks) render their content,
//! as transformers renders them when no mask is asked for. Not provided: `strftime_now`, tools
//! and documents (rendered as `none`), and assistant masks.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::loading::json::read_json;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

/// One message of a conversation, as chat templates read it (`role`, `content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The special tokens transformers passes to a template (`special_tokens_map`).
const SPECIAL_TOKENS: [&str; 8] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
];

/// A Jinja chat template and the special tokens it may use.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    special_tokens: BTreeMap<String, serde_json::Value>,
}

/// A special token as `tokenizer_config.json` writes it: a string or an `AddedToken` object.
fn token_content(value: &serde_json::Value) -> Option<serde_json::Value> {
    match value {
        serde_json::Value::String(_) => Some(value.clone()),
        serde_json::Value::Object(object) => object.get("content").cloned(),
        serde_json::Value::Array(items) => Some(serde_json::Value::Array(
            items.iter().filter_map(token_content).collect(),
        )),
        _ => None,
    }
}

impl ChatTemplate {
    /// A template from its Jinja source, with no special tokens; checked for syntax now.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let template = Self {
            source: without_generation_tags(&source.into()),
            special_tokens: BTreeMap::new(),
        };
        environment()
            .template_from_str(&template.source)
            .map_err(template_error)?;
        Ok(template)
    }

    /// Give the template a special token (`bos_token`, `eos_token`, ...) by name.
    pub fn with_special_token(mut self, name: &str, content: &str) -> Self {
        self.special_tokens
            .insert(name.to_string(), serde_json::Value::from(content));
        self
    }

    /// The `chat_template` of a `tokenizer_config.json` and its special tokens, or `None` when
    /// it has no template. `chat_template` is a string, or a list of `{name, template}`: then
    /// `name` picks one, and without a name the one called `default` is used, as transformers'
    /// `get_chat_template` does.
    pub fn from_tokenizer_config(path: &Path, name: Option<&str>) -> Result<Option<Self>> {
        let config: serde_json::Value = read_json(path)?;
        let source = match (config.get("chat_template"), name) {
            (None | Some(serde_json::Value::Null), _) => return Ok(None),
            (Some(serde_json::Value::String(source)), None) => source.clone(),
            (Some(serde_json::Value::Array(named)), name) => {
                let wanted = name.unwrap_or("default");
                let names: Vec<&str> = named
                    .iter()
                    .filter_map(|t| t.get("name")?.as_str())
                    .collect();
                named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(wanted))
                    .and_then(|t| t.get("template")?.as_str())
                    .ok_or_else(|| {
                        Error::ChatTemplate(format!(
                            "{} has no chat template named `{wanted}`; pass one of {names:?}",
                            path.display()
                        ))
                    })?
                    .to_string()
            }
            (Some(serde_json::Value::String(_)), Some(name)) => {
                return Err(Error::ChatTemplate(format!(
                    "{} has a single chat template, not one named `{name}`; pass no name",
                    path.display()
                )))
            }
            (Some(_), _) => {
                return Err(Error::ChatTemplate(format!(
                    "chat_template in {} must be a string or a list of {{name, template}}",
                    path.display()
                )))
            }
        };
        let mut template = Self::new(source)?;
        for key in SPECIAL_TOKENS {
            if let Some(content) = config.get(key).and_then(token_content) {
                // transformers leaves out unset tokens and an empty list.
                if content.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                template.special_tokens.insert(key.to_string(), content);
            }
        }
        Ok(Some(template))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`, as transformers' `apply_chat_template(..., tokenize=False)`; with
    /// `add_generation_prompt`, ending with what starts the assistant's reply. A template's
    /// `raise_exception` becomes an [`Error::ChatTemplate`] with its message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(key, value)| (key.clone(), Value::from(Serde(value))))
            .collect();
        context.insert("messages".into(), Value::from(Serde(messages)));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let environment = environment();
        let template = environment
            .template_from_str(&self.source)
            .map_err(template_error)?;
        template.render(context).map_err(template_error)
    }
}

/// `source` with each `{% generation %}` ... `{% endgeneration %}` block turned into an
/// always-true `if`, keeping its whitespace control (`{%-`, `-%}`): transformers' extension
/// renders the block's content unchanged, and minijinja has no custom tags.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..close];
        let (left, body) = match inner.strip_prefix(['-', '+']) {
            Some(body) => (&inner[..1], body),
            None => ("", inner),
        };
        let (body, right) = match body.strip_suffix(['-', '+']) {
            Some(body) => (body, &inner[inner.len() - 1..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(replacement) => out.push_str(&format!("{{%{left} {replacement} {right}%}}")),
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

fn template_error(error: minijinja::Error) -> Error {
    match (error.kind(), error.detail()) {
        // raise_exception's message as the template wrote it.
        (ErrorKind::InvalidOperation, Some(detail)) => Error::ChatTemplate(detail.to_string()),
        _ => Error::ChatTemplate(format!("{error:#}")),
    }
}

/// transformers' environment: `ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True, extensions=[loopcontrols])` with its `tojson` and `raise_exception`.
fn environment() -> Environment<'static> {
    let mut environment = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build();
    // The builder only fails on conflicting custom delimiters, and these are the defaults.
    if let Ok(syntax) = syntax {
        environment.set_syntax(syntax);
    }
    environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    environment.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    environment.add_filter("tojson", tojson);
    environment
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which transformers
/// installs as `tojson` (Jinja's own escapes HTML characters): `", "` and `": "` between
/// items, keys in insertion order, non-ASCII characters as they are.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let invalid = |what: String| minijinja::Error::new(ErrorKind::InvalidOperation, what);
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let number = f64::try_from(value.clone())?;
            if !number.is_finite() {
                // Python writes NaN and Infinity, which are not JSON either.
                return Err(invalid(format!("tojson cannot write {number}")));
            }
            let text = number.to_string();
            out.push_str(&text);
            // Python's repr of a whole float keeps ".0".
            if !text.contains(['.', 'e', 'E']) {
                out.push_str(".0");
            }
        }
        ValueKind::String => out.push_str(
            &serde_json::to_string(value.as_str().unwrap_or_default())
                .map_err(|e| invalid(e.to_string()))?,
        ),
        ValueKind::Map => {
            out.push('{');
            let mut first = true;
            for key in value.try_iter()? {
                if !first {
                    out.push_str(separator);
                }
                first = false;
                newline(out, depth + 1);
                write_json(&Value::from(key.to_string()), indent, depth + 1, out)?;
                out.push_str(": ");
                write_json(&value.get_item(&key)?, indent, depth + 1, out)?;
            }
            if !first {
                newline(out, depth);
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            let mut first = true;
            for item in value.try_iter()? {
                if !first {
                    out.push_str(separator);
                }
                first = false;
                newline(out, depth + 1);
                write_json(&item, indent, depth + 1, out)?;
            }
            if !first {
                newline(out, depth);
            }
            out.push(']');
        }
        kind => return Err(invalid(format!("tojson cannot write a {kind}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jinja2 with transformers' extension: `{%-` and `-%}` strip around the block tags as
    /// around any tag, and the block renders its content: "a" + "b" + "c".
    #[test]
    fn generation_blocks_render_their_content_with_their_whitespace_control() {
        let source =
            "a\n{%- generation -%}\n b {%- endgeneration %}c{% generation %}d{% endgeneration %}";
        let template = ChatTemplate::new(source).unwrap();
        assert_eq!(template.render(&[], false).unwrap(), "abcd");
        assert_eq!(
            without_generation_tags("{% if x %}{%+ generation %}{% endif %}"),
            "{% if x %}{%+ if true %}{% endif %}"
        );
    }
}
