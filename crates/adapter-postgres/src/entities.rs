//! SeaORM entities for every pharox table, for code that wants the ORM
//! (admin tools, reports). The adapter's hot paths use hand-written SQL on
//! the same connection; the pool and consumer calls use these entities.
//!
//! Column names and text encodings are those of the Python pharox 0.11
//! schema (see the `pharox-migration` crate). The derive macros generate
//! `Entity`, `Column`, `ActiveModel`, `PrimaryKey` and `Relation` items;
//! they follow SeaORM's conventions and are not documented one by one.
#![allow(missing_docs)]

/// `proxy_pool`: named groups of proxies.
pub mod proxy_pool {
    use sea_orm::entity::prelude::*;

    /// One pool row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "proxy_pool")]
    pub struct Model {
        /// Identity.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Unique name.
        #[sea_orm(unique)]
        pub name: String,
        /// Free text.
        pub description: Option<String>,
        /// Creation time.
        pub created_at: TimeDateTimeWithTimeZone,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `consumer`: named lease holders.
pub mod consumer {
    use sea_orm::entity::prelude::*;

    /// One consumer row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "consumer")]
    pub struct Model {
        /// Identity.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Unique name.
        #[sea_orm(unique)]
        pub name: String,
        /// Creation time.
        pub created_at: TimeDateTimeWithTimeZone,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `proxy`: the proxies with their leasing and health state.
pub mod proxy {
    use std::fmt;

    use sea_orm::entity::prelude::*;

    /// The `credentials` JSON of a proxy row, as stored. `Debug` redacts it
    /// (the value holds the proxy's password); the JSON is `.0`.
    #[derive(Clone, PartialEq, DeriveValueType)]
    pub struct StoredCredentials(pub Json);

    impl fmt::Debug for StoredCredentials {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("StoredCredentials(***)")
        }
    }

    /// One proxy row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "proxy")]
    pub struct Model {
        /// Identity.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Owning pool.
        pub pool_id: Uuid,
        /// Host name or address.
        pub host: String,
        /// TCP port.
        pub port: i32,
        /// `http`, `https`, `socks4` or `socks5`.
        pub protocol: String,
        /// `active`, `inactive`, `slow` or `banned`.
        pub status: String,
        /// `{"user": .., "password": ..}` or null. Contains a secret, so
        /// its `Debug` shows neither user nor password.
        pub credentials: Option<StoredCredentials>,
        /// Provider or feed.
        pub source: Option<String>,
        /// Country.
        pub country: Option<String>,
        /// City.
        pub city: Option<String>,
        /// Latitude in degrees.
        pub latitude: Option<f64>,
        /// Longitude in degrees.
        pub longitude: Option<f64>,
        /// Internet service provider.
        pub isp: Option<String>,
        /// Autonomous system number.
        pub asn: Option<i64>,
        /// Lease limit; null for unlimited.
        pub max_concurrency: Option<i32>,
        /// Active leases (kept exact by every writer).
        pub current_leases: i32,
        /// Last health check.
        pub checked_at: Option<TimeDateTimeWithTimeZone>,
        /// Creation time.
        pub created_at: TimeDateTimeWithTimeZone,
        /// Failed checks in a row.
        pub consecutive_failures: i32,
        /// Latest reachable latency in ms.
        pub last_latency_ms: Option<f64>,
        /// Latest error.
        pub last_error: Option<String>,
        /// Latest HTTP status.
        pub last_http_status: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `lease`: who holds which proxy until when.
pub mod lease {
    use sea_orm::entity::prelude::*;

    /// One lease row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "lease")]
    pub struct Model {
        /// Identity.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Leased proxy.
        pub proxy_id: Uuid,
        /// Its pool.
        pub pool_id: Uuid,
        /// Holder.
        pub consumer_id: Uuid,
        /// Pool name at leasing time.
        pub pool_name: String,
        /// `active` or `released` (Python's cleanup may write `expired`).
        pub status: String,
        /// Grant time.
        pub acquired_at: TimeDateTimeWithTimeZone,
        /// Expiry.
        pub expires_at: TimeDateTimeWithTimeZone,
        /// Release time.
        pub released_at: Option<TimeDateTimeWithTimeZone>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `pool_selector_state`: the shared round-robin cursors.
pub mod pool_selector_state {
    use sea_orm::entity::prelude::*;

    /// One cursor.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "pool_selector_state")]
    pub struct Model {
        /// Pool.
        #[sea_orm(primary_key, auto_increment = false)]
        pub pool_id: Uuid,
        /// Strategy name (`round_robin`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub strategy: String,
        /// Last proxy handed out.
        pub last_proxy_id: Option<Uuid>,
        /// Creation time.
        pub created_at: TimeDateTimeWithTimeZone,
        /// Last advance.
        pub updated_at: TimeDateTimeWithTimeZone,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `proxy_health_record`: the health-check history.
pub mod proxy_health_record {
    use sea_orm::entity::prelude::*;

    /// One health check.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "proxy_health_record")]
    pub struct Model {
        /// Identity.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Checked proxy.
        pub proxy_id: Uuid,
        /// When.
        pub checked_at: TimeDateTimeWithTimeZone,
        /// Whether the proxy relayed the request.
        pub reachable: bool,
        /// Latency in ms.
        pub latency_ms: Option<f64>,
        /// Protocol spoken.
        pub protocol: String,
        /// Status before.
        pub status_before: String,
        /// Status after.
        pub status_after: String,
        /// Failure reason.
        pub error: Option<String>,
        /// HTTP status from the target.
        pub http_status: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
