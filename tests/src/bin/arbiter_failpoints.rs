//! `arbiter` with its crash points armed from `FAILPOINTS`: for the crash
//! tests only. It exists so that no binary a user builds reads failpoints:
//! `cargo test` compiles them into the `arbiter` library (a dev-dependency
//! feature of this crate), and only this program sets them up.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _failpoints = match arbiter::failpoints::from_env() {
        Ok(scenario) => scenario,
        Err(why) => {
            eprintln!("arbiter-failpoints: {why}");
            return std::process::ExitCode::from(2);
        }
    };
    arbiter::cli::main().await
}
