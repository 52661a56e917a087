//! `tokengate demo`.
use crate::demo;
use crate::observe::logging::{self, LogFormat};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where tokengate listens.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long, default_value = crate::config::DEFAULT_ADMIN)]
    pub admin: std::net::SocketAddr,
    /// Number of customers to generate.
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
}

pub fn run(args: DemoArgs) -> ExitCode {
    logging::init(LogFormat::Text);
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        // Handlers first: a Ctrl-C while PostgreSQL starts must still clean up.
        let shutdown = super::serve::shutdown_signal();
        let demo = match demo::start(args.listen, Some(args.admin), args.customers).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("tokengate demo: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", demo::banner(&demo));
        println!(
            "Stored as tokens: {}{}",
            demo::STORED_QUERY,
            demo::stored_preview(&demo).await
        );
        println!(
            "What each role sees for {}:{}",
            demo::PREVIEW_QUERY,
            demo::preview(&demo).await
        );
        shutdown.await;
        eprintln!("stopping the demo and removing its database...");
        let demo::Demo { server, pg } = demo;
        server.shutdown().await;
        tokio::task::spawn_blocking(move || pg.stop()).await.ok();
        ExitCode::SUCCESS
    })
}
