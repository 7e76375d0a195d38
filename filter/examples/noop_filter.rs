//! A proxy-wasm HTTP filter that does nothing: the floor any Wasm filter
//! pays per request in Envoy (VM entry for each callback, context
//! bookkeeping). Built and used only by `scripts/bench-mask.sh`, whose
//! latency table compares it with Envoy without a filter and with nhi-gate.
//!
//! `cargo build --release --example noop_filter --target wasm32-wasip1`

// Only the wasm32 build is a filter; natively (cargo test builds examples) it is empty.
#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Noop;

    impl Context for Noop {}

    impl HttpContext for Noop {}
}
