//! The routes: TEI's, OpenAI's, the Inference API's `POST /`, and the chat page.

pub(crate) mod chat_page;
pub(crate) mod inference;
pub(crate) mod openai;
pub(crate) mod tei;
