//! The OpenAPI document for `/api/v1`, served at `/api/v1/openapi.json`; a test checks that it
//! names every API route and parameter the dashboard accepts.

pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{AlertQuery, ApplianceQuery, DriveQuery};

    fn params(doc: &serde_json::Value, path: &str) -> Vec<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} is documented"))
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_document_names_every_parameter_the_lists_accept() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        for (path, accepted) in [
            ("/api/v1/appliances", &ApplianceQuery::PARAMS[..]),
            ("/api/v1/alerts", &AlertQuery::PARAMS[..]),
            ("/api/v1/drives", &DriveQuery::PARAMS[..]),
        ] {
            let mut documented = params(&doc, path);
            documented.sort();
            let mut accepted: Vec<String> = accepted.iter().map(|s| (*s).to_owned()).collect();
            accepted.sort();
            assert_eq!(documented, accepted, "{path}");
        }
        for path in [
            "/api/v1/summary",
            "/api/v1/versions",
            "/api/v1/drives/{key}",
            "/api/v1/appliances/{serial}",
            "/api/v1/appliances/{serial}/reports/{report_id}",
        ] {
            assert!(
                doc["paths"][path]["get"].is_object(),
                "{path} is documented"
            );
        }
    }
}
