//! WeChat API failures as one typed error: `errcode`, `errmsg`, a hint for a person, and whether a call may be retried.

use serde::Serialize;

/// How a failed call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// `-1`: WeChat is busy; retried with backoff.
    Busy,
    /// `45011`: the per-minute quota; retried once the next minute starts.
    NextMinute,
    /// `40001`, `40014`, `42001`: the access token is invalid or expired; a new token, one retry.
    Token,
    /// Everything else: reported, never retried.
    Never,
}

/// A WeChat error answer (non-zero `errcode`), or a failure to get one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub errcode: i64,
    pub errmsg: String,
    pub hint: String,
    /// Where it arose; decides the HTTP API's answer.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a failure arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// WeChat refused the call, or gave no usable answer (`502`).
    WeChat,
    /// The request itself is wrong (bad input, no credentials): nothing was called (`400`).
    Request,
    /// The spool could not be read or written (`503`).
    Storage,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.origin != Origin::WeChat || self.errcode == TRANSPORT {
            write!(f, "{} (hint: {})", self.errmsg, self.hint)
        } else {
            write!(
                f,
                "WeChat answered errcode {} ({}) (hint: {})",
                self.errcode, self.errmsg, self.hint
            )
        }
    }
}

impl std::error::Error for ApiError {}

/// `errcode` of failures that never reached an answer from WeChat (network, timeout, bad JSON).
pub const TRANSPORT: i64 = -2;

impl ApiError {
    /// The error WeChat answered, with the hint wxhook knows for its code.
    pub fn from_answer(errcode: i64, errmsg: impl Into<String>) -> ApiError {
        ApiError {
            errcode,
            errmsg: errmsg.into(),
            hint: hint(errcode).to_owned(),
            origin: Origin::WeChat,
        }
    }

    /// A call that got no usable answer.
    pub fn transport(what: impl std::fmt::Display) -> ApiError {
        ApiError {
            errcode: TRANSPORT,
            errmsg: what.to_string(),
            hint: "no usable answer from the WeChat API (network, timeout or an unexpected body); check `api_base` and connectivity".into(),
            origin: Origin::WeChat,
        }
    }

    /// A problem on this side before any call (no credentials, bad input).
    pub fn local(errmsg: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            errcode: TRANSPORT,
            errmsg: errmsg.into(),
            hint: hint.into(),
            origin: Origin::Request,
        }
    }

    /// The spool failed.
    pub fn storage(what: impl std::fmt::Display) -> ApiError {
        ApiError {
            errcode: TRANSPORT,
            errmsg: format!("the spool failed: {what}"),
            hint: "check data_dir: its disk must be writable and not full".into(),
            origin: Origin::Storage,
        }
    }

    pub fn recovery(&self) -> Recovery {
        match self.errcode {
            -1 => Recovery::Busy,
            45011 => Recovery::NextMinute,
            40001 | 40014 | 42001 => Recovery::Token,
            _ => Recovery::Never,
        }
    }

    /// The `errcode` as a metric label.
    pub fn label(&self) -> String {
        self.errcode.to_string()
    }
}

/// What a person should do about an error code.
pub fn hint(errcode: i64) -> &'static str {
    match errcode {
        -1 => "WeChat's system is busy; retried with backoff, try again later",
        40001 | 40014 | 42001 => {
            "the access token was invalid or expired; wxhook fetched a new one and retried once"
        }
        40002 => "an argument of the request is invalid",
        40013 => "the appid is invalid: check `app_id`",
        40125 => {
            "the AppSecret is invalid: check `app_secret` (Settings and Development > Basic Configuration)"
        }
        40164 => {
            "this server's IP address is not on the account's IP whitelist: add it in the WeChat console (Settings and Development > Basic Configuration > IP whitelist)"
        }
        45009 => {
            "the daily quota of this API is used up; it resets tomorrow (cgi-bin/openapi/quota/get shows it)"
        }
        45011 => "the per-minute quota of this API is used up; wait for the next minute",
        48001 => {
            "this account is not authorized for the API: publishing needs a verified (certified) account; see the developer center's interface permissions"
        }
        53500 => "publishing is banned for this account",
        53501 => "publishing too often; wait before submitting again",
        53502 => "the publish_id is invalid (not a publish job of this account)",
        53503 => "the draft did not pass the publication check: review the draft's content",
        53504 => "the draft must be published from the WeChat Official Accounts Platform website",
        53505 => {
            "save the draft manually on the WeChat Official Accounts Platform website before publishing"
        }
        53600 => "the article_id is invalid",
        61004 => {
            "this server's IP address is not on the third-party platform's IP whitelist (the platform's development settings)"
        }
        61006 => {
            "the stored component_verify_ticket was refused: wait for WeChat's next ticket (every 10 minutes) at the authorization event URL"
        }
        61023 => {
            "the authorized account's refresh token is no longer valid: the account must authorize the platform again"
        }
        _ => "see WeChat's global error codes for this errcode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_their_handling() {
        assert_eq!(ApiError::from_answer(-1, "busy").recovery(), Recovery::Busy);
        assert_eq!(
            ApiError::from_answer(45011, "q").recovery(),
            Recovery::NextMinute
        );
        for code in [40001, 40014, 42001] {
            assert_eq!(ApiError::from_answer(code, "t").recovery(), Recovery::Token);
        }
        for code in [45009, 48001, 40164, 53503, 53504, 53505, 53600, 12345] {
            assert_eq!(ApiError::from_answer(code, "x").recovery(), Recovery::Never);
        }
        assert!(ApiError::from_answer(40164, "x").hint.contains("whitelist"));
        assert!(
            ApiError::from_answer(53505, "x")
                .to_string()
                .contains("save the draft manually")
        );
    }
}
