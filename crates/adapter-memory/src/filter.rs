//! Filter evaluation for the adapter.
//!
//! Same semantics as [`ProxyFilter::matches`] as documented on
//! [`ProxyFilter`], evaluated in one pass with predicates in place. (The
//! domain's `matches` first evaluates the tree with predicates counted as
//! true, which wrongly rejects every proxy when a predicate sits inside
//! `none_of`; it also walks the tree for predicates on every call.)

use pharox_domain::{GEO_EXACT_TOLERANCE_DEG, Proxy, ProxyFilter, haversine_km};

/// Whether `proxy` satisfies the whole tree.
pub(crate) fn matches(filter: &ProxyFilter, proxy: &Proxy) -> bool {
    fn eq(want: Option<&str>, have: Option<&str>) -> bool {
        want.is_none_or(|w| have == Some(w))
    }
    eq(filter.source.as_deref(), proxy.source.as_deref())
        && eq(filter.country.as_deref(), proxy.country.as_deref())
        && eq(filter.city.as_deref(), proxy.city.as_deref())
        && eq(filter.isp.as_deref(), proxy.isp.as_deref())
        && filter.asn.is_none_or(|asn| proxy.asn == Some(asn))
        && geo_matches(filter, proxy)
        && filter.all_of.iter().all(|f| matches(f, proxy))
        && (filter.any_of.is_empty() || filter.any_of.iter().any(|f| matches(f, proxy)))
        && !filter.none_of.iter().any(|f| matches(f, proxy))
        && filter.predicate.as_ref().is_none_or(|p| p.test(proxy))
}

fn geo_matches(filter: &ProxyFilter, proxy: &Proxy) -> bool {
    let (Some(lat), Some(lon)) = (filter.latitude, filter.longitude) else {
        return true;
    };
    let (Some(plat), Some(plon)) = (proxy.latitude, proxy.longitude) else {
        return false;
    };
    match filter.radius_km {
        Some(radius) => haversine_km(lat, lon, plat, plon) <= radius,
        None => {
            (plat - lat).abs() <= GEO_EXACT_TOLERANCE_DEG
                && (plon - lon).abs() <= GEO_EXACT_TOLERANCE_DEG
        }
    }
}
