//! OpenAPI schemas of the domain types the wire carries (statuses,
//! protocols, selectors, the filter tree, outcomes, import rows), written
//! here so the domain crate stays free of utoipa. Each is a type that
//! exists only to name its schema (`#[schema(value_type = ...)]` in
//! `wire.rs`). Value lists come from the domain's own lists (`ALL`,
//! `IMPORT_COLUMNS`) where it has them; the tests below match the rest
//! against the domain's serde form, exhaustively.

use std::borrow::Cow;

use pharox::domain::{IMPORT_COLUMNS, MAX_TARGET_CHARS};
use pharox::{LeaseStatus, ProxyFailureKind, ProxyProtocol, ProxyStatus, Selector};
use serde_json::json;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, Discriminator, KnownFormat, ObjectBuilder, OneOfBuilder,
    Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// Declares a type that only names a schema: `$name` in the document,
/// built by `$build`.
macro_rules! named_schema {
    ($(#[$doc:meta])* $ty:ident = $name:literal, $build:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $ty {}

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $build.into()
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

named_schema!(
    /// `ProxyStatus`: active, inactive, slow, banned.
    ProxyStatusSchema = "ProxyStatus",
    string_enum(
        "A proxy's status.",
        ProxyStatus::ALL.iter().map(|s| s.as_str())
    )
);

named_schema!(
    /// `ProxyProtocol`: http, https, socks4, socks5.
    ProxyProtocolSchema = "ProxyProtocol",
    string_enum(
        "How a proxy is spoken to.",
        ProxyProtocol::ALL.iter().map(|p| p.as_str())
    )
);

named_schema!(
    /// `Selector`: how an acquire picks among the proxies that qualify.
    SelectorSchema = "Selector",
    string_enum(
        "How an acquire picks among the proxies that qualify (default first_available).",
        Selector::ALL.iter().map(|s| s.as_str())
    )
);

named_schema!(
    /// `LeaseStatus`: active, released.
    LeaseStatusSchema = "LeaseStatus",
    string_enum(
        "A lease's status.",
        LEASE_STATUSES.iter().map(|s| s.as_str())
    )
);

named_schema!(
    /// `ProxyFailureKind`: how a proxy failed a request.
    ProxyFailureKindSchema = "ProxyFailureKind",
    string_enum(
        "How a proxy failed a request (the proxy's fault, not the site's).",
        FAILURE_KINDS.iter().map(|k| k.as_str())
    )
);

named_schema!(
    /// Proxies per status: one count for every status.
    StatusCountsSchema = "StatusCounts",
    ProxyStatus::ALL.iter().fold(
        ObjectBuilder::new()
            .description(Some("Proxies per status; every status is present."))
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
        |object, status| {
            object
                .property(status.as_str(), count())
                .required(status.as_str())
        },
    )
);

named_schema!(
    /// The domain's filter tree (`ProxyFilter`'s JSON form), recursive
    /// through `all_of`, `any_of` and `none_of`.
    ProxyFilterSchema = "ProxyFilter",
    ObjectBuilder::new()
        .description(Some(
            "Proxies matching every given field and every nested group; at most 32 levels \
             deep and 1,024 nodes.",
        ))
        .property("source", text("The provider."))
        .property("country", text("Country code, e.g. AR."))
        .property("city", text("City name."))
        .property("isp", text("The ISP."))
        .property(
            "asn",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .maximum(Some(u32::MAX))
                .description(Some("Autonomous system number.")),
        )
        .property(
            "latitude",
            number("Centre of a radius search, degrees (with longitude and radius_km).")
                .minimum(Some(-90))
                .maximum(Some(90)),
        )
        .property(
            "longitude",
            number("Centre of a radius search, degrees (with latitude and radius_km).")
                .minimum(Some(-180))
                .maximum(Some(180)),
        )
        .property(
            "radius_km",
            number("Radius around latitude/longitude, km.").exclusive_minimum(Some(0)),
        )
        .property("all_of", filters("Every one of these matches."))
        .property("any_of", filters("At least one of these matches."))
        .property("none_of", filters("None of these matches."))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
);

named_schema!(
    /// The domain's outcome (`Outcome`'s JSON form), tagged by `kind`.
    OutcomeSchema = "Outcome",
    OneOfBuilder::new()
        .description(Some("What one use of a leased proxy came to."))
        .examples([json!({"kind": "success", "latency_ms": 120})])
        .discriminator(Some(Discriminator::new("kind")))
        .item(
            outcome("success", "The request went through.")
                .property("target", target("The site, if known."))
                .property("latency_ms", latency()),
        )
        .item(
            outcome("proxy_failure", "The proxy failed; it adds to its error score.")
                .property("failure", Ref::from_schema_name("ProxyFailureKind"))
                .required("failure"),
        )
        .item(
            outcome("blocked", "The site blocked the proxy: it is banned for that site.")
                .property("target", target("The site."))
                .required("target")
                .property("http_status", http_status()),
        )
        .item(
            outcome("target_error", "The site failed; the proxy is not to blame.")
                .property("target", target("The site, if known."))
                .property("http_status", http_status()),
        )
);

named_schema!(
    /// One element of a JSON import: the import columns, each a string, a
    /// number or null.
    ImportRowSchema = "ImportRow",
    IMPORT_COLUMNS.iter().fold(
        ObjectBuilder::new()
            .description(Some(
                "One proxy of an import: `url`, or `host` and `port`, and the optional columns.",
            ))
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
        |object, column| {
            object.property(
                *column,
                ObjectBuilder::new().schema_type(SchemaType::Array(vec![
                    Type::String,
                    Type::Number,
                    Type::Null,
                ])),
            )
        },
    )
);

/// Every lease status, in the domain's order (checked in the tests).
const LEASE_STATUSES: [LeaseStatus; 2] = [LeaseStatus::Active, LeaseStatus::Released];

/// Every proxy failure kind (checked in the tests).
const FAILURE_KINDS: [ProxyFailureKind; 5] = [
    ProxyFailureKind::ConnectRefused,
    ProxyFailureKind::Timeout,
    ProxyFailureKind::ProxyAuth,
    ProxyFailureKind::Protocol,
    ProxyFailureKind::Other,
];

fn string_enum<'a>(description: &str, values: impl Iterator<Item = &'a str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values.collect::<Vec<_>>()))
}

/// A string that is not blank when given.
fn text(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"\S"))
        .description(Some(description))
}

fn number(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
        .description(Some(description))
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
}

fn filters(description: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .description(Some(description))
        .items(Ref::from_schema_name("ProxyFilter"))
}

fn outcome(kind: &str, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .description(Some(description))
        .property(
            "kind",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([kind])),
        )
        .required("kind")
}

fn target(description: &str) -> ObjectBuilder {
    text(description).max_length(Some(MAX_TARGET_CHARS))
}

fn latency() -> ObjectBuilder {
    number("How long the request took through the proxy, ms.")
}

fn http_status() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(0))
        .maximum(Some(u16::MAX))
        .description(Some("The HTTP status the site answered with."))
}

#[cfg(test)]
mod tests {
    use pharox::Outcome;
    use serde_json::Value;

    use super::*;

    fn enum_of<T: ToSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).unwrap();
        schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Fails to compile when the domain gains a variant, so the lists above
    /// are revisited.
    fn listed_status(s: LeaseStatus) -> bool {
        match s {
            LeaseStatus::Active | LeaseStatus::Released => LEASE_STATUSES.contains(&s),
        }
    }

    fn listed_failure(k: ProxyFailureKind) -> bool {
        match k {
            ProxyFailureKind::ConnectRefused
            | ProxyFailureKind::Timeout
            | ProxyFailureKind::ProxyAuth
            | ProxyFailureKind::Protocol
            | ProxyFailureKind::Other => FAILURE_KINDS.contains(&k),
        }
    }

    #[test]
    fn enum_values_are_the_domains_serde_names() {
        for s in LEASE_STATUSES {
            assert!(listed_status(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        for k in FAILURE_KINDS {
            assert!(listed_failure(k));
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        for (values, wire) in [
            (
                enum_of::<LeaseStatusSchema>(),
                serde_json::to_value(LEASE_STATUSES),
            ),
            (
                enum_of::<ProxyFailureKindSchema>(),
                serde_json::to_value(FAILURE_KINDS),
            ),
            (
                enum_of::<ProxyStatusSchema>(),
                serde_json::to_value(ProxyStatus::ALL),
            ),
            (
                enum_of::<ProxyProtocolSchema>(),
                serde_json::to_value(ProxyProtocol::ALL),
            ),
            (
                enum_of::<SelectorSchema>(),
                serde_json::to_value(Selector::ALL),
            ),
        ] {
            assert_eq!(json!(values), wire.unwrap());
        }
    }

    #[test]
    fn every_outcome_kind_has_a_variant_with_its_fields() {
        let schema = serde_json::to_value(OutcomeSchema::schema()).unwrap();
        let variants = schema["oneOf"].as_array().unwrap();
        let kinds: Vec<&Value> = variants
            .iter()
            .map(|v| &v["properties"]["kind"]["enum"][0])
            .collect();
        for outcome in [
            Outcome::success(),
            Outcome::proxy_failure(ProxyFailureKind::Timeout),
            Outcome::blocked(pharox::TargetHost::new("shop.example").unwrap()),
            Outcome::target_error(),
        ] {
            let wire = serde_json::to_value(&outcome).unwrap();
            assert!(kinds.contains(&&wire["kind"]), "{wire}");
            let variant = variants
                .iter()
                .find(|v| v["properties"]["kind"]["enum"][0] == wire["kind"])
                .unwrap();
            for key in wire.as_object().unwrap().keys() {
                assert!(variant["properties"].get(key).is_some(), "{key} of {wire}");
            }
        }
        assert_eq!(kinds.len(), 4);
    }

    #[test]
    fn the_filter_schema_names_every_field_of_the_domains_json_form() {
        let schema = serde_json::to_value(ProxyFilterSchema::schema()).unwrap();
        let filter: pharox::ProxyFilter = serde_json::from_value(json!({
            "source": "s", "country": "AR", "city": "c", "isp": "i", "asn": 1,
            "latitude": 1.0, "longitude": 2.0, "radius_km": 3.0,
            "all_of": [{"city": "x"}], "any_of": [{"city": "y"}], "none_of": [{"city": "z"}]
        }))
        .unwrap();
        let wire = serde_json::to_value(&filter).unwrap();
        let keys: Vec<&String> = wire.as_object().unwrap().keys().collect();
        let props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let (mut keys, mut props) = (keys, props);
        keys.sort();
        props.sort();
        assert_eq!(keys, props);
    }
}
