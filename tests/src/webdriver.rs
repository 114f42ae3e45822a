//! Just enough of the W3C WebDriver protocol to drive headless Chromium
//! from a test: start `chromedriver`, open a session, navigate, find, type,
//! click, accept a confirmation, read the page, take a screenshot.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::http::request_json;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` on a free port, and one browser session.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

/// Where the browser and its driver are, if installed.
pub fn installed() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("/usr/bin/{n}"))
            .find(|p| std::path::Path::new(p).exists())
    };
    Some((
        find(&["chromium", "chromium-browser", "google-chrome"])?,
        find(&["chromedriver"])?,
    ))
}

impl Browser {
    /// Starts headless Chromium at 1280×800.
    pub async fn start(chromium: &str, chromedriver: &str) -> anyhow::Result<Browser> {
        let port = crate::process::free_port()?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while request_json(&browser.addr, "GET", "/status", None)
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,800"]
            }
        }}});
        let created = request_json(&browser.addr, "POST", "/session", Some(&caps)).await?;
        browser.session = created["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session id: {created}"))?
            .to_string();
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        Ok(request_json(&self.addr, method, &path, body.as_ref()).await?["value"].take())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    /// The element matching a CSS selector, if there is one now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        found[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits (up to the tests' patience) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            if let Some(e) = self.find(css).await {
                return Ok(e);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no {css} on the page"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, element: &str, text: &str) -> anyhow::Result<()> {
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    pub async fn click(&self, element: &str) -> anyhow::Result<()> {
        self.call("POST", &format!("/element/{element}/click"), None)
            .await?;
        Ok(())
    }

    pub async fn text(&self, element: &str) -> anyhow::Result<String> {
        let v = self
            .call("GET", &format!("/element/{element}/text"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Accepts a `confirm()` dialog, waiting for it to open.
    pub async fn accept_dialog(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.call("POST", "/alert/accept", None).await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no dialog opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's HTML as it is now (after scripts changed it).
    pub async fn source(&self) -> anyhow::Result<String> {
        let v = self.call("GET", "/source", None).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let v = self.call("GET", "/screenshot", None).await?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Resizes the window (phone width, say).
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }
}

impl Browser {
    /// Ends the session (the browser exits) and the driver.
    pub async fn quit(self) {
        let _ = self.call("DELETE", "", None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
