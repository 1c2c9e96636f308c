//! What every server process of m3-rs shares, so that each listener is bounded the same way.
//!
//! A server that accepts connections from anyone must bound what one peer can hold: how many
//! connections, for how long an idle or half-written request or frame may stay open, and how
//! many file descriptors the process may use before `accept` fails. This crate holds those
//! bounds once:
//!
//! | module | what |
//! |---|---|
//! | [`http`] | [`http::serve`]: axum routers over hyper with a header-read (and keep-alive idle) timeout, a connection limit and graceful shutdown |
//! | [`tcp`] | [`tcp::ConnectionLimit`] for hand-written TCP servers (rawtcp, m3msg) and [`tcp::FrameDeadline`], the idle and partial-frame read deadline |
//! | [`fd_limit`] | [`fd_limit::raise`]: the soft `RLIMIT_NOFILE` up to the hard limit at start |
//! | [`process`] | what each binary's `main` does the same way: logging, the shutdown signal, the file-size signal |

#![warn(missing_docs, unreachable_pub)]

pub mod fd_limit;
pub mod http;
pub mod process;
pub mod tcp;
