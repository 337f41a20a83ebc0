use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Proxy, ValidationError};

/// Mean Earth radius used by geo filters, in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0;
/// Coordinates within this many degrees count as the same place for an exact
/// (radius-less) geo filter.
pub const GEO_EXACT_TOLERANCE_DEG: f64 = 1e-6;
/// The deepest filter tree accepted (the root is level 1).
pub const MAX_FILTER_DEPTH: usize = 32;
/// The most filter nodes accepted in one tree.
pub const MAX_FILTER_NODES: usize = 1024;

/// Great-circle distance in kilometres between two points given in degrees,
/// by the haversine formula on a sphere of [`EARTH_RADIUS_KM`].
#[must_use]
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// A Rust test on a proxy, part of a [`ProxyFilter`] but never serialised.
#[derive(Clone)]
pub struct Predicate(Arc<dyn Fn(&Proxy) -> bool + Send + Sync>);

impl Predicate {
    /// Wraps a closure.
    pub fn new(f: impl Fn(&Proxy) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Runs the test.
    #[must_use]
    pub fn test(&self, proxy: &Proxy) -> bool {
        (self.0)(proxy)
    }
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Predicate(..)")
    }
}

/// Which proxies a caller wants: a tree of conditions that must all hold.
///
/// A node matches a proxy when every scalar field that is set equals the
/// proxy's (exact, case-sensitive), the geo condition holds, every `all_of`
/// child matches, at least one `any_of` child matches (when there are any),
/// no `none_of` child matches, and the predicate (if any) returns true. The
/// empty filter matches every proxy. Geo: with `radius_km` the proxy must lie
/// within that great-circle distance; without it, within
/// [`GEO_EXACT_TOLERANCE_DEG`] of the point. A proxy without coordinates
/// never matches a geo condition.
///
/// Everything but the predicate round-trips through serde (JSON:
/// `{"country": "AR", "any_of": [{"city": "Rosario"}, {"asn": 7303}]}`);
/// unknown keys are rejected.
///
/// ```
/// use pharox_domain::ProxyFilter;
/// let filter = ProxyFilter::new()
///     .country("DE")
///     .any_of([ProxyFilter::new().city("Berlin"), ProxyFilter::new().near(48.14, 11.58, 50.0)])
///     .none_of([ProxyFilter::new().isp("SlowNet")])
///     .predicate(|p| p.port != 25);
/// filter.validate()?;
/// # Ok::<(), pharox_domain::ValidationError>(())
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFilter {
    /// Proxy source must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Country must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// City must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// ISP must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// ASN must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Latitude of the geo condition (with `longitude`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude of the geo condition (with `latitude`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Radius of the geo condition in km; without it the match is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_km: Option<f64>,
    /// Every one of these must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<ProxyFilter>,
    /// At least one of these must match (ignored when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<ProxyFilter>,
    /// None of these may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub none_of: Vec<ProxyFilter>,
    /// A Rust test, evaluated after everything else; not serialised.
    #[serde(skip)]
    pub predicate: Option<Predicate>,
}

impl PartialEq for ProxyFilter {
    /// Compares the serialisable parts; predicates are equal only when both
    /// are absent or both are the same closure.
    fn eq(&self, other: &Self) -> bool {
        let same_predicate = match (&self.predicate, &other.predicate) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0),
            _ => false,
        };
        same_predicate
            && self.source == other.source
            && self.country == other.country
            && self.city == other.city
            && self.isp == other.isp
            && self.asn == other.asn
            && self.latitude == other.latitude
            && self.longitude == other.longitude
            && self.radius_km == other.radius_km
            && self.all_of == other.all_of
            && self.any_of == other.any_of
            && self.none_of == other.none_of
    }
}

impl ProxyFilter {
    /// The empty filter: matches every proxy.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires this source.
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Requires this country.
    #[must_use]
    pub fn country(mut self, country: impl Into<String>) -> Self {
        self.country = Some(country.into());
        self
    }

    /// Requires this city.
    #[must_use]
    pub fn city(mut self, city: impl Into<String>) -> Self {
        self.city = Some(city.into());
        self
    }

    /// Requires this ISP.
    #[must_use]
    pub fn isp(mut self, isp: impl Into<String>) -> Self {
        self.isp = Some(isp.into());
        self
    }

    /// Requires this ASN.
    #[must_use]
    pub fn asn(mut self, asn: u32) -> Self {
        self.asn = Some(asn);
        self
    }

    /// Requires the proxy to be at this point (within 1e-6 degrees).
    #[must_use]
    pub fn at(mut self, latitude: f64, longitude: f64) -> Self {
        self.latitude = Some(latitude);
        self.longitude = Some(longitude);
        self.radius_km = None;
        self
    }

    /// Requires the proxy to be within `radius_km` of this point.
    #[must_use]
    pub fn near(mut self, latitude: f64, longitude: f64, radius_km: f64) -> Self {
        self.latitude = Some(latitude);
        self.longitude = Some(longitude);
        self.radius_km = Some(radius_km);
        self
    }

    /// Adds children that must all match.
    #[must_use]
    pub fn all_of(mut self, filters: impl IntoIterator<Item = ProxyFilter>) -> Self {
        self.all_of.extend(filters);
        self
    }

    /// Adds alternatives of which at least one must match.
    #[must_use]
    pub fn any_of(mut self, filters: impl IntoIterator<Item = ProxyFilter>) -> Self {
        self.any_of.extend(filters);
        self
    }

    /// Adds children none of which may match.
    #[must_use]
    pub fn none_of(mut self, filters: impl IntoIterator<Item = ProxyFilter>) -> Self {
        self.none_of.extend(filters);
        self
    }

    /// Adds a Rust test (replacing any earlier one on this node).
    #[must_use]
    pub fn predicate(mut self, f: impl Fn(&Proxy) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Predicate::new(f));
        self
    }

    /// Parses the JSON form and validates it.
    pub fn from_json(json: &str) -> Result<Self, ValidationError> {
        // serde_json bounds recursion (128 levels), so hostile nesting fails
        // here before the depth check below.
        let filter: Self = serde_json::from_str(json).map_err(|e| {
            ValidationError::new("filter", format!("is not valid filter JSON: {e}"))
        })?;
        filter.validate()?;
        Ok(filter)
    }

    /// Whether this node sets no condition of its own and has no children:
    /// the filter that matches everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.source.is_none()
            && self.country.is_none()
            && self.city.is_none()
            && self.isp.is_none()
            && self.asn.is_none()
            && self.latitude.is_none()
            && self.longitude.is_none()
            && self.radius_km.is_none()
            && self.all_of.is_empty()
            && self.any_of.is_empty()
            && self.none_of.is_empty()
            && self.predicate.is_none()
    }

    /// Whether a predicate appears anywhere in the tree.
    #[must_use]
    pub fn has_predicate(&self) -> bool {
        self.predicate.is_some() || self.children().any(ProxyFilter::has_predicate)
    }

    /// The child nodes, in the order all_of, any_of, none_of.
    pub fn children(&self) -> impl Iterator<Item = &ProxyFilter> {
        self.all_of.iter().chain(&self.any_of).chain(&self.none_of)
    }

    /// Checks the tree: size and depth limits first (so hostile input is
    /// refused before any work proportional to it), then every node's values.
    pub fn validate(&self) -> Result<(), ValidationError> {
        // Most acquires filter nothing.
        if self.is_empty() {
            return Ok(());
        }
        let mut nodes = 0usize;
        self.check_shape(1, &mut nodes)?;
        self.check_values("filter")
    }

    fn check_shape(&self, depth: usize, nodes: &mut usize) -> Result<(), ValidationError> {
        *nodes += 1;
        if *nodes > MAX_FILTER_NODES {
            return Err(ValidationError::new(
                "filter",
                format!("has more than {MAX_FILTER_NODES} nodes"),
            ));
        }
        if depth > MAX_FILTER_DEPTH {
            return Err(ValidationError::new(
                "filter",
                format!("is nested deeper than {MAX_FILTER_DEPTH} levels"),
            ));
        }
        self.children()
            .try_for_each(|child| child.check_shape(depth + 1, nodes))
    }

    fn check_values(&self, path: &str) -> Result<(), ValidationError> {
        crate::names::validate_optional_text([
            ("source", &self.source),
            ("country", &self.country),
            ("city", &self.city),
            ("isp", &self.isp),
        ])
        .map_err(|e| e.within(path))?;
        crate::proxy::validate_coordinates(self.latitude, self.longitude)
            .map_err(|e| e.within(path))?;
        if let Some(radius) = self.radius_km {
            if !(radius.is_finite() && radius > 0.0) {
                return Err(
                    ValidationError::new("radius_km", "must be a finite number > 0").within(path),
                );
            }
            if self.latitude.is_none() {
                return Err(
                    ValidationError::new("radius_km", "needs latitude and longitude").within(path),
                );
            }
        }
        for (name, list) in [
            ("all_of", &self.all_of),
            ("any_of", &self.any_of),
            ("none_of", &self.none_of),
        ] {
            for (i, child) in list.iter().enumerate() {
                child.check_values(&format!("{path}.{name}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Whether `proxy` satisfies the whole tree, predicates included (see
    /// the type's docs).
    #[must_use]
    pub fn matches(&self, proxy: &Proxy) -> bool {
        self.eval(proxy, true)
    }

    /// Evaluates the tree as if every predicate returned true, wherever it
    /// sits. For a tree without predicates this is [`matches`](Self::matches);
    /// storage that compiles filters to a query uses it as the reference for
    /// what the query must select. It is not a superset test: a predicate
    /// under `none_of` taken as true excludes more.
    #[must_use]
    pub fn matches_without_predicates(&self, proxy: &Proxy) -> bool {
        self.eval(proxy, false)
    }

    fn eval(&self, proxy: &Proxy, with_predicates: bool) -> bool {
        fn eq(want: Option<&str>, have: Option<&str>) -> bool {
            want.is_none_or(|w| have == Some(w))
        }
        eq(self.source.as_deref(), proxy.source.as_deref())
            && eq(self.country.as_deref(), proxy.country.as_deref())
            && eq(self.city.as_deref(), proxy.city.as_deref())
            && eq(self.isp.as_deref(), proxy.isp.as_deref())
            && self.asn.is_none_or(|asn| proxy.asn == Some(asn))
            && self.geo_matches(proxy)
            && self.all_of.iter().all(|f| f.eval(proxy, with_predicates))
            && (self.any_of.is_empty()
                || self.any_of.iter().any(|f| f.eval(proxy, with_predicates)))
            && !self.none_of.iter().any(|f| f.eval(proxy, with_predicates))
            && (!with_predicates || self.predicate.as_ref().is_none_or(|p| p.test(proxy)))
    }

    fn geo_matches(&self, proxy: &Proxy) -> bool {
        let (Some(lat), Some(lon)) = (self.latitude, self.longitude) else {
            return true;
        };
        let (Some(plat), Some(plon)) = (proxy.latitude, proxy.longitude) else {
            return false;
        };
        match self.radius_km {
            Some(radius) => haversine_km(lat, lon, plat, plon) <= radius,
            None => {
                (plat - lat).abs() <= GEO_EXACT_TOLERANCE_DEG
                    && (plon - lon).abs() <= GEO_EXACT_TOLERANCE_DEG
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PoolId, ProxyProtocol};

    fn proxy(country: &str, city: &str, asn: u32, at: Option<(f64, f64)>) -> Proxy {
        let mut b = Proxy::builder(PoolId::new(), "10.0.0.1", 8080, ProxyProtocol::Http)
            .country(country)
            .city(city)
            .asn(asn)
            .source("feed")
            .isp("NetCo");
        if let Some((lat, lon)) = at {
            b = b.location(lat, lon);
        }
        b.build().unwrap()
    }

    #[test]
    fn haversine_known_distance() {
        // Paris to London is about 344 km.
        let d = haversine_km(48.8566, 2.3522, 51.5074, -0.1278);
        assert!((d - 343.5).abs() < 1.0, "{d}");
        assert!(haversine_km(10.0, 10.0, 10.0, 10.0).abs() < 1e-9);
    }

    #[test]
    fn scalar_and_composite_clauses() {
        let ar = proxy("AR", "Rosario", 7303, None);
        assert!(ProxyFilter::new().matches(&ar));
        assert!(ProxyFilter::new().country("AR").asn(7303).matches(&ar));
        assert!(
            !ProxyFilter::new().country("ar").matches(&ar),
            "exact, case-sensitive"
        );
        let any = ProxyFilter::new().any_of([
            ProxyFilter::new().city("Cordoba"),
            ProxyFilter::new().city("Rosario"),
        ]);
        assert!(any.matches(&ar));
        let none = ProxyFilter::new().none_of([ProxyFilter::new().asn(7303)]);
        assert!(!none.matches(&ar));
        let all = ProxyFilter::new().all_of([
            ProxyFilter::new().source("feed"),
            ProxyFilter::new().isp("NetCo"),
        ]);
        assert!(all.matches(&ar));
        let pred = ProxyFilter::new().predicate(|p| p.port == 9999);
        assert!(!pred.matches(&ar));
        assert!(pred.matches_without_predicates(&ar));
        let nested_pred =
            ProxyFilter::new().none_of([ProxyFilter::new().predicate(|p| p.port == 8080)]);
        assert!(nested_pred.has_predicate());
        assert!(!nested_pred.matches(&ar));
    }

    #[test]
    fn geo_exact_and_radius() {
        let p = proxy("FR", "Paris", 1, Some((48.8566, 2.3522)));
        assert!(ProxyFilter::new().at(48.8566, 2.3522).matches(&p));
        assert!(ProxyFilter::new().at(48.856_600_5, 2.352_200_5).matches(&p));
        assert!(!ProxyFilter::new().at(48.8567, 2.3522).matches(&p));
        assert!(ProxyFilter::new().near(51.5074, -0.1278, 350.0).matches(&p));
        assert!(!ProxyFilter::new().near(51.5074, -0.1278, 340.0).matches(&p));
        let nowhere = proxy("FR", "Paris", 1, None);
        assert!(
            !ProxyFilter::new()
                .near(48.0, 2.0, 20_000.0)
                .matches(&nowhere)
        );
    }

    #[test]
    fn json_round_trip_and_unknown_keys() {
        let f = ProxyFilter::new()
            .country("AR")
            .near(-34.6, -58.4, 25.0)
            .any_of([ProxyFilter::new().asn(7303), ProxyFilter::new().isp("X")])
            .none_of([ProxyFilter::new().all_of([ProxyFilter::new().city("Y")])]);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(ProxyFilter::from_json(&json).unwrap(), f);
        let e = ProxyFilter::from_json(r#"{"contry": "AR"}"#).unwrap_err();
        assert!(e.reason.contains("contry"), "{e}");
    }

    #[test]
    fn validation_names_the_nested_field() {
        let f = ProxyFilter::new().any_of([
            ProxyFilter::new(),
            ProxyFilter {
                radius_km: Some(5.0),
                ..ProxyFilter::new()
            },
        ]);
        let e = f.validate().unwrap_err();
        assert_eq!(e.field, "filter.any_of[1].radius_km");
        let e = ProxyFilter::new()
            .near(0.0, 0.0, -1.0)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "filter.radius_km");
        let e = ProxyFilter::new().at(95.0, 0.0).validate().unwrap_err();
        assert_eq!(e.field, "filter.latitude");
        let e = ProxyFilter::new().country("").validate().unwrap_err();
        assert_eq!(e.field, "filter.country");
    }

    #[test]
    fn hostile_shapes_are_refused() {
        let mut deep = ProxyFilter::new();
        for _ in 0..MAX_FILTER_DEPTH {
            deep = ProxyFilter::new().all_of([deep]);
        }
        assert!(deep.validate().unwrap_err().reason.contains("deeper"));
        let wide = ProxyFilter::new()
            .any_of((0..MAX_FILTER_NODES).map(|i| ProxyFilter::new().asn(i as u32)));
        assert!(wide.validate().unwrap_err().reason.contains("nodes"));
        let ok = ProxyFilter::new()
            .any_of((0..MAX_FILTER_NODES - 1).map(|i| ProxyFilter::new().asn(i as u32)));
        assert!(ok.validate().is_ok());
        let json = "[".repeat(10_000);
        assert!(ProxyFilter::from_json(&json).is_err());
    }
}
