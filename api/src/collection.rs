//! Graph-style collections: `where` filters, `orderBy`/`orderDirection`, Relay pagination with
//! an optional `totalCount`, and time travel (`block`, `finality`), over one declarative field
//! table per entity.
//!
//! Each entity ([`Collection`]) lists its filterable and orderable fields once, with the SQL
//! expression and kind of each ([`Field`]). From that table this module registers the GraphQL
//! input `<Entity>_filter` (`field`, `field_not`, `field_gt`, `field_gte`, `field_lt`,
//! `field_lte`, `field_in`, `field_not_in`, `field_contains`, `field_not_contains`,
//! `field_starts_with`, `field_not_starts_with` as the kind allows, and nested `and`/`or`) and
//! the enum `<Entity>_orderBy`, as The Graph names them, parses a filter into a [`Cond`] tree
//! with clear errors, and turns it into SQL with every value bound (never spliced).
//!
//! Pagination is keyset: a cursor holds the ordering it belongs to, the order value and the
//! entity's unique key, so pages stay stable while rows are added; `first` is at most 1000.

use std::borrow::Cow;
use std::marker::PhantomData;

use async_graphql::registry::{MetaEnumValue, MetaInputValue, MetaType, MetaTypeId, Registry};
use async_graphql::{Enum, InputObject, InputType, InputValueError, InputValueResult, Name, Value};
use base64::Engine as _;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row as _};

use crate::error::ApiError;

/// Deepest `and`/`or` nesting a filter may have.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most values an `_in`/`_not_in` list may hold.
pub const MAX_IN_LIST: usize = 1000;

/// What a field holds, which decides its operators and how a value is checked and cast.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A 64-bit integer (`Int`).
    Int,
    /// A float (`Float`).
    Float,
    /// An exact decimal or big integer, given as a string (`"1500000000000000000"`).
    Numeric,
    /// Free text.
    Text,
    /// A 0x-hex address or hash, compared lowercase.
    Hex,
    /// A time (`DateTime`, RFC 3339).
    Time,
    Bool,
    /// One of an enum's values: (GraphQL name, stored value) pairs.
    Enum(&'static EnumField),
    /// A list of 0x-hex strings (`_contains`: holds all of the given).
    HexList,
}

/// An enum-typed field: its GraphQL type and how its values are stored.
#[derive(Debug)]
pub struct EnumField {
    pub type_name: &'static str,
    pub register: fn(&mut Registry) -> String,
    pub values: &'static [(&'static str, &'static str)],
}

/// One field of an entity.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The GraphQL field name (camelCase).
    pub name: &'static str,
    /// Its SQL expression over the collection's `FROM` (alias `t`).
    pub sql: &'static str,
    pub kind: Kind,
}

/// An entity's collection: its field table and key.
#[derive(Debug)]
pub struct Spec {
    /// `Swap` → `Swap_filter`, `Swap_orderBy`.
    pub filter_type: &'static str,
    pub order_type: &'static str,
    pub fields: &'static [Field],
    /// A unique text expression: the tie-break of every ordering.
    pub key: &'static str,
    /// The default ordering (a field name) and direction; `None` orders by the key.
    pub default_order: Option<&'static str>,
    pub default_desc: bool,
}

/// A type with a collection spec.
pub trait Collection: Send + Sync + Clone + std::fmt::Debug + 'static {
    const SPEC: &'static Spec;
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Not,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Contains,
    NotContains,
    StartsWith,
    NotStartsWith,
}

/// Suffixes, longest first where one ends another.
const SUFFIXES: &[(&str, Op)] = &[
    ("_not_starts_with", Op::NotStartsWith),
    ("_starts_with", Op::StartsWith),
    ("_not_contains", Op::NotContains),
    ("_contains", Op::Contains),
    ("_not_in", Op::NotIn),
    ("_not", Op::Not),
    ("_gte", Op::Gte),
    ("_lte", Op::Lte),
    ("_gt", Op::Gt),
    ("_lt", Op::Lt),
    ("_in", Op::In),
];

fn suffix(op: Op) -> &'static str {
    SUFFIXES
        .iter()
        .find(|(_, o)| *o == op)
        .map_or("", |(s, _)| s)
}

impl Kind {
    fn ops(self) -> &'static [Op] {
        use Op::*;
        match self {
            Kind::Int | Kind::Float | Kind::Numeric | Kind::Time => {
                &[Eq, Not, Gt, Gte, Lt, Lte, In, NotIn]
            }
            Kind::Text | Kind::Hex => &[
                Eq,
                Not,
                Gt,
                Gte,
                Lt,
                Lte,
                In,
                NotIn,
                Contains,
                NotContains,
                StartsWith,
                NotStartsWith,
            ],
            Kind::Bool => &[Eq, Not],
            Kind::Enum(_) => &[Eq, Not, In, NotIn],
            Kind::HexList => &[Contains, NotContains],
        }
    }

    /// The GraphQL type of one value.
    fn gql_type(self, registry: &mut Registry) -> String {
        match self {
            Kind::Int => "Int".into(),
            Kind::Float => "Float".into(),
            Kind::Numeric | Kind::Text | Kind::Hex | Kind::HexList => "String".into(),
            Kind::Time => {
                <chrono::DateTime<chrono::Utc> as InputType>::create_type_info(registry);
                "DateTime".into()
            }
            Kind::Bool => "Boolean".into(),
            Kind::Enum(e) => {
                (e.register)(registry);
                e.type_name.into()
            }
        }
    }

    /// The SQL type values are cast to.
    fn sql_type(self) -> &'static str {
        match self {
            Kind::Int => "int8",
            Kind::Float => "float8",
            Kind::Numeric => "numeric",
            Kind::Text | Kind::Hex | Kind::Enum(_) => "text",
            Kind::Time => "timestamptz",
            Kind::Bool => "bool",
            Kind::HexList => "text[]",
        }
    }

    /// Checks one value and renders it as the text Postgres casts.
    fn text(self, value: &Value, partial: bool) -> Result<String, String> {
        match (self, value) {
            (Kind::Int, Value::Number(n)) => n
                .as_i64()
                .map(|n| n.to_string())
                .ok_or_else(|| format!("{n} is not an integer")),
            (Kind::Int, Value::String(s)) => s
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| format!("{s:?} is not an integer")),
            (Kind::Float, Value::Number(n)) => n
                .as_f64()
                .map(|f| f.to_string())
                .ok_or_else(|| format!("{n} is not a number")),
            // Bounded: `1e-9000000000` would print as nine billion digits (domain::number).
            (Kind::Numeric, Value::Number(n)) => {
                chainfold_domain::number::parse_decimal(&n.to_string())
                    .map(|d| d.to_plain_string())
                    .map_err(|e| e.to_string())
            }
            (Kind::Numeric, Value::String(s)) => chainfold_domain::number::parse_decimal(s.trim())
                .map(|d| d.to_plain_string())
                .map_err(|e| e.to_string()),
            (Kind::Text, Value::String(s)) => Ok(s.clone()),
            (Kind::Hex | Kind::HexList, Value::String(s)) => {
                let t = s.trim().to_ascii_lowercase();
                // A whole value is 0x + hex digits; a part (`_contains`, `_starts_with`) may
                // leave out the 0x.
                let digits = match t.strip_prefix("0x") {
                    Some(d) if !d.is_empty() || partial => d,
                    None if partial => t.as_str(),
                    _ => return Err(format!("{s:?} is not 0x-hex")),
                };
                if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{s:?} is not 0x-hex"));
                }
                Ok(t)
            }
            (Kind::Time, Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc).to_rfc3339())
                .map_err(|_| format!("{s:?} is not an RFC 3339 time")),
            (Kind::Bool, Value::Boolean(b)) => Ok(b.to_string()),
            (Kind::Enum(e), Value::Enum(name)) => e
                .values
                .iter()
                .find(|(g, _)| *g == name.as_str())
                .map(|(_, db)| (*db).to_owned())
                .ok_or_else(|| format!("{name} is not a {}", e.type_name)),
            (Kind::Enum(e), Value::String(name)) => e
                .values
                .iter()
                .find(|(g, _)| *g == name.as_str())
                .map(|(_, db)| (*db).to_owned())
                .ok_or_else(|| format!("{name} is not a {}", e.type_name)),
            (_, other) => Err(format!("{other} is not a valid value here")),
        }
    }
}

/// A bound value: one (or NULL), or a list.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    One(Option<String>),
    Many(Vec<String>),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Cmp { field: usize, op: Op, arg: Arg },
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

/// Parses a filter object against `spec`.
pub fn parse_filter(spec: &Spec, value: &Value, depth: usize) -> Result<Cond, String> {
    if depth > MAX_FILTER_DEPTH {
        return Err(format!(
            "filter nested deeper than {MAX_FILTER_DEPTH} and/or levels"
        ));
    }
    let Value::Object(map) = value else {
        return Err(format!("{} must be an object", spec.filter_type));
    };
    let mut all = Vec::with_capacity(map.len());
    for (key, value) in map {
        let key = key.as_str();
        if key == "and" || key == "or" {
            let Value::List(items) = value else {
                return Err(format!("`{key}` takes a list of filters"));
            };
            if items.is_empty() {
                return Err(format!("`{key}` needs at least one filter"));
            }
            let parts = items
                .iter()
                .map(|v| parse_filter(spec, v, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            all.push(if key == "and" {
                Cond::And(parts)
            } else {
                Cond::Or(parts)
            });
            continue;
        }
        let (name, op) = SUFFIXES
            .iter()
            .find_map(|(s, op)| key.strip_suffix(s).map(|n| (n, *op)))
            .unwrap_or((key, Op::Eq));
        let Some(field) = spec.fields.iter().position(|f| f.name == name) else {
            return Err(format!("{} has no field `{key}`", spec.filter_type));
        };
        let kind = spec.fields[field].kind;
        if !kind.ops().contains(&op) {
            return Err(format!("{} has no field `{key}`", spec.filter_type));
        }
        let partial = matches!(
            op,
            Op::Contains | Op::NotContains | Op::StartsWith | Op::NotStartsWith
        ) && !matches!(kind, Kind::HexList);
        let arg = match (op, value, kind) {
            (Op::In | Op::NotIn, Value::List(items), _)
            | (_, Value::List(items), Kind::HexList) => {
                if items.len() > MAX_IN_LIST {
                    return Err(format!(
                        "`{key}` lists {} values; at most {MAX_IN_LIST}",
                        items.len()
                    ));
                }
                Arg::Many(
                    items
                        .iter()
                        .map(|v| kind.text(v, false).map_err(|e| format!("`{key}`: {e}")))
                        .collect::<Result<_, _>>()?,
                )
            }
            (Op::In | Op::NotIn, _, _) | (_, _, Kind::HexList) => {
                return Err(format!("`{key}` takes a list"))
            }
            (Op::Eq | Op::Not, Value::Null, _) => Arg::One(None),
            (_, Value::Null, _) => return Err(format!("`{key}` cannot be null")),
            (_, v, _) => Arg::One(Some(
                kind.text(v, partial).map_err(|e| format!("`{key}`: {e}"))?,
            )),
        };
        all.push(Cond::Cmp { field, op, arg });
    }
    Ok(if all.len() == 1 {
        all.remove(0)
    } else {
        Cond::And(all)
    })
}

/// Appends `cond` as SQL (values bound).
pub fn push_cond(qb: &mut QueryBuilder<'_, Postgres>, spec: &Spec, cond: &Cond) {
    match cond {
        Cond::And(parts) | Cond::Or(parts) => {
            let glue = if matches!(cond, Cond::And(_)) {
                " AND "
            } else {
                " OR "
            };
            if parts.is_empty() {
                qb.push("TRUE");
                return;
            }
            qb.push("(");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    qb.push(glue);
                }
                push_cond(qb, spec, part);
            }
            qb.push(")");
        }
        Cond::Cmp { field, op, arg } => {
            let f = spec.fields[*field];
            let (sql, ty) = (f.sql, f.kind.sql_type());
            match (op, arg) {
                (Op::Eq, Arg::One(None)) => {
                    qb.push(format_args!("(({sql}) IS NULL)"));
                }
                (Op::Not, Arg::One(None)) => {
                    qb.push(format_args!("(({sql}) IS NOT NULL)"));
                }
                (Op::In | Op::NotIn, Arg::Many(values)) => {
                    let not = if *op == Op::NotIn { "NOT " } else { "" };
                    qb.push(format_args!("({not}coalesce(({sql}) = ANY("));
                    qb.push_bind(values.clone());
                    qb.push(format_args!("::{ty}[]), false))"));
                }
                (Op::Contains | Op::NotContains, Arg::Many(values)) => {
                    let not = if *op == Op::NotContains { "NOT " } else { "" };
                    qb.push(format_args!("({not}coalesce(({sql}) @> "));
                    qb.push_bind(values.clone());
                    qb.push("::text[], false))");
                }
                (_, Arg::One(Some(v))) => {
                    let (pre, mid, post) = match op {
                        Op::Eq => ("((", ") = ", ""),
                        Op::Not => ("((", ") IS DISTINCT FROM ", ""),
                        Op::Gt => ("((", ") > ", ""),
                        Op::Gte => ("((", ") >= ", ""),
                        Op::Lt => ("((", ") < ", ""),
                        Op::Lte => ("((", ") <= ", ""),
                        Op::Contains => ("(strpos((", "), ", ") > 0"),
                        Op::NotContains => ("(NOT coalesce(strpos((", "), ", ") > 0, false)"),
                        Op::StartsWith => ("(coalesce(starts_with((", "), ", "), false)"),
                        Op::NotStartsWith => ("(NOT coalesce(starts_with((", "), ", "), false)"),
                        Op::In | Op::NotIn => ("(", "", ""),
                    };
                    qb.push(format_args!("{pre}{sql}{mid}"));
                    qb.push_bind(v.clone());
                    qb.push(format_args!("::{ty}{post})"));
                }
                _ => {
                    qb.push("FALSE");
                }
            }
        }
    }
}

/// `where:` of a collection: a parsed [`Cond`].
#[derive(Debug, Clone)]
pub struct Where<C: Collection>(pub Cond, PhantomData<C>);

impl<C: Collection> InputType for Where<C> {
    type RawValueType = Self;

    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed(C::SPEC.filter_type)
    }

    fn create_type_info(registry: &mut Registry) -> String {
        registry.create_input_type::<Self, _>(MetaTypeId::InputObject, |registry| {
            let mut input_fields = async_graphql::indexmap::IndexMap::new();
            let mut add = |name: String, ty: String, description: Option<String>| {
                input_fields.insert(
                    name.clone(),
                    MetaInputValue {
                        name,
                        description,
                        ty,
                        deprecation: Default::default(),
                        default_value: None,
                        visible: None,
                        inaccessible: false,
                        tags: vec![],
                        is_secret: false,
                        directive_invocations: vec![],
                    },
                );
            };
            for f in C::SPEC.fields {
                let ty = f.kind.gql_type(registry);
                for op in f.kind.ops() {
                    let list = matches!(op, Op::In | Op::NotIn) || matches!(f.kind, Kind::HexList);
                    let ty = if list {
                        format!("[{ty}!]")
                    } else {
                        ty.clone()
                    };
                    add(format!("{}{}", f.name, suffix(*op)), ty, None);
                }
            }
            let me = C::SPEC.filter_type;
            add(
                "and".into(),
                format!("[{me}!]"),
                Some("All of these filters hold.".into()),
            );
            add(
                "or".into(),
                format!("[{me}!]"),
                Some("At least one of these filters holds.".into()),
            );
            MetaType::InputObject {
                name: me.to_owned(),
                description: Some(format!(
                    "Filter of `{}` (Graph-style: `field`, `field_not`, `field_gt`, `field_in`, …, nested `and`/`or`).",
                    me.trim_end_matches("_filter")
                )),
                input_fields,
                visible: None,
                inaccessible: false,
                tags: vec![],
                rust_typename: Some(std::any::type_name::<Self>()),
                oneof: false,
                directive_invocations: vec![],
            }
        })
    }

    fn parse(value: Option<Value>) -> InputValueResult<Self> {
        let value = value.unwrap_or(Value::Null);
        parse_filter(C::SPEC, &value, 0)
            .map(|c| Where(c, PhantomData))
            .map_err(InputValueError::custom)
    }

    fn to_value(&self) -> Value {
        Value::Object(Default::default())
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }
}

/// `orderBy:` of a collection: one of its fields.
#[derive(Debug, Clone, Copy)]
pub struct OrderBy<C: Collection>(pub usize, PhantomData<C>);

impl<C: Collection> InputType for OrderBy<C> {
    type RawValueType = Self;

    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed(C::SPEC.order_type)
    }

    fn create_type_info(registry: &mut Registry) -> String {
        registry.create_input_type::<Self, _>(MetaTypeId::Enum, |_| {
            let mut enum_values = async_graphql::indexmap::IndexMap::new();
            for f in C::SPEC
                .fields
                .iter()
                .filter(|f| !matches!(f.kind, Kind::HexList))
            {
                enum_values.insert(
                    f.name.to_owned(),
                    MetaEnumValue {
                        name: f.name.to_owned(),
                        description: None,
                        deprecation: Default::default(),
                        visible: None,
                        inaccessible: false,
                        tags: vec![],
                        directive_invocations: vec![],
                    },
                );
            }
            MetaType::Enum {
                name: C::SPEC.order_type.to_owned(),
                description: Some("Fields a collection can be ordered by.".into()),
                enum_values,
                visible: None,
                inaccessible: false,
                tags: vec![],
                rust_typename: Some(std::any::type_name::<Self>()),
                directive_invocations: vec![],
                requires_scopes: vec![],
            }
        })
    }

    fn parse(value: Option<Value>) -> InputValueResult<Self> {
        let name = match value {
            Some(Value::Enum(n)) => n.to_string(),
            Some(Value::String(s)) => s,
            _ => return Err(InputValueError::custom("expected a field name")),
        };
        C::SPEC
            .fields
            .iter()
            .position(|f| f.name == name && !matches!(f.kind, Kind::HexList))
            .map(|i| OrderBy(i, PhantomData))
            .ok_or_else(|| {
                InputValueError::custom(format!("{} has no field {name}", C::SPEC.order_type))
            })
    }

    fn to_value(&self) -> Value {
        Value::Enum(Name::new(C::SPEC.fields[self.0].name))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }
}

/// `orderDirection:`.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum OrderDirection {
    #[graphql(name = "asc")]
    Asc,
    #[graphql(name = "desc")]
    Desc,
}

/// Which blocks count: all indexed ones, or only those deep enough below the head.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Finality {
    /// Everything indexed, up to the head.
    #[default]
    Latest,
    /// At least half the chain's confirmations below its head.
    Safe,
    /// At least the chain's confirmations below its head (`chains.toml`), as `final` in SQL.
    Finalized,
}

/// `block:` of a time-travel query: a number or a hash (one of them).
#[derive(InputObject, Debug, Clone)]
#[graphql(name = "Block_height")]
pub struct BlockHeight {
    pub number: Option<i64>,
    pub hash: Option<String>,
}

/// Where a page starts and how many rows it has.
#[derive(Debug)]
pub struct PageRequest<'a> {
    pub filter: Option<&'a Cond>,
    pub order: Option<usize>,
    pub direction: Option<OrderDirection>,
    pub first: i64,
    pub after: Option<&'a str>,
    pub total: bool,
}

/// One page: rows (each with its cursor), whether more follow, and the total when asked.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<(PgRow, String)>,
    pub has_next: bool,
    pub total: Option<i64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CursorData {
    /// Ordering (field name or `_key`) and direction.
    o: String,
    d: String,
    /// The order value as text (NULL for a NULL), and the key.
    v: Option<String>,
    k: String,
}

/// Reads a page of `spec`'s rows. `from` pushes the FROM clause (alias `t`) and a WHERE with
/// the collection's own conditions (at least `TRUE`).
pub async fn page(
    pool: &PgPool,
    spec: &'static Spec,
    req: PageRequest<'_>,
    from: &(dyn Fn(&mut QueryBuilder<'_, Postgres>) + Sync),
    columns: &str,
) -> Result<Page, ApiError> {
    let order = match req.order {
        Some(i) => Some(i),
        None => spec
            .default_order
            .and_then(|n| spec.fields.iter().position(|f| f.name == n)),
    };
    let desc = match req.direction {
        Some(d) => d == OrderDirection::Desc,
        None if req.order.is_none() => spec.default_desc,
        None => false,
    };
    let (order_name, order_sql, order_ty) = match order {
        Some(i) => (
            spec.fields[i].name,
            spec.fields[i].sql,
            spec.fields[i].kind.sql_type(),
        ),
        None => ("_key", spec.key, "text"),
    };
    let dir = if desc { "desc" } else { "asc" };
    let after = match req.after {
        None => None,
        Some(c) => {
            let data: CursorData = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::BadUserInput(format!("invalid cursor {c:?}")))?;
            if data.o != order_name || data.d != dir {
                return Err(ApiError::BadUserInput(format!(
                    "cursor {c:?} belongs to orderBy {} {}, not {order_name} {dir}",
                    data.o, data.d
                )));
            }
            Some(data)
        }
    };
    let mut qb = QueryBuilder::new(format!(
        "SELECT {columns}, ({order_sql})::text AS cf_order, ({key})::text AS cf_key FROM ",
        key = spec.key
    ));
    from(&mut qb);
    if let Some(cond) = req.filter {
        qb.push(" AND ");
        push_cond(&mut qb, spec, cond);
    }
    if let Some(c) = &after {
        let cmp = if desc { "<" } else { ">" };
        let key = spec.key;
        match &c.v {
            Some(v) => {
                qb.push(format_args!(" AND (({order_sql}) {cmp} "));
                qb.push_bind(v.clone());
                qb.push(format_args!("::{order_ty} OR (({order_sql}) = "));
                qb.push_bind(v.clone());
                qb.push(format_args!("::{order_ty} AND ({key}) {cmp} "));
                qb.push_bind(c.k.clone());
                qb.push(format_args!(") OR ({order_sql}) IS NULL)"));
            }
            None => {
                qb.push(format_args!(
                    " AND (({order_sql}) IS NULL AND ({key}) {cmp} "
                ));
                qb.push_bind(c.k.clone());
                qb.push(")");
            }
        }
    }
    let (dir_sql, key) = (if desc { "DESC" } else { "ASC" }, spec.key);
    qb.push(format_args!(
        " ORDER BY ({order_sql}) {dir_sql} NULLS LAST, ({key}) {dir_sql} LIMIT "
    ));
    qb.push_bind(req.first + 1);
    let mut rows = qb.build().fetch_all(pool).await?;
    let has_next = rows.len() as i64 > req.first;
    rows.truncate(req.first as usize);
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let data = CursorData {
            o: order_name.to_owned(),
            d: dir.to_owned(),
            v: row.try_get("cf_order")?,
            k: row.try_get("cf_key")?,
        };
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&data).unwrap_or_default());
        out.push((row, cursor));
    }
    let total = if req.total {
        let mut qb = QueryBuilder::new("SELECT count(*) FROM ");
        from(&mut qb);
        if let Some(cond) = req.filter {
            qb.push(" AND ");
            push_cond(&mut qb, spec, cond);
        }
        Some(qb.build_query_scalar::<i64>().fetch_one(pool).await?)
    } else {
        None
    };
    Ok(Page {
        rows: out,
        has_next,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static ACTION: EnumField = EnumField {
        type_name: "LendingAction",
        register: |r| <crate::types::LendingAction as InputType>::create_type_info(r),
        values: &[("DEPOSIT", "deposit"), ("BORROW", "borrow")],
    };
    static SPEC: Spec = Spec {
        filter_type: "Thing_filter",
        order_type: "Thing_orderBy",
        fields: &[
            Field {
                name: "amount",
                sql: "t.amount",
                kind: Kind::Numeric,
            },
            Field {
                name: "wallet",
                sql: "t.wallet",
                kind: Kind::Hex,
            },
            Field {
                name: "action",
                sql: "t.action",
                kind: Kind::Enum(&ACTION),
            },
            Field {
                name: "blockNumber",
                sql: "t.block_number",
                kind: Kind::Int,
            },
            Field {
                name: "pools",
                sql: "t.pools",
                kind: Kind::HexList,
            },
        ],
        key: "t.id",
        default_order: None,
        default_desc: true,
    };

    fn parse(json: serde_json::Value) -> Result<Cond, String> {
        parse_filter(&SPEC, &Value::from_json(json).expect("a GraphQL value"), 0)
    }

    fn sql(cond: &Cond) -> String {
        let mut qb = QueryBuilder::<Postgres>::new("");
        push_cond(&mut qb, &SPEC, cond);
        qb.sql().to_owned()
    }

    #[test]
    fn graph_style_suffixes_parse_into_comparisons() {
        let c = parse(serde_json::json!({"amount_gte": "1000", "wallet_in": ["0xAB"], "action_not": "BORROW"})).expect("a valid filter");
        let Cond::And(parts) = &c else {
            panic!("{c:?}")
        };
        // (serde_json orders object keys: action_not, amount_gte, wallet_in)
        // enums compare by their stored value; addresses lowercase
        assert_eq!(
            parts[0],
            Cond::Cmp {
                field: 2,
                op: Op::Not,
                arg: Arg::One(Some("borrow".into()))
            }
        );
        assert_eq!(
            parts[1],
            Cond::Cmp {
                field: 0,
                op: Op::Gte,
                arg: Arg::One(Some("1000".into()))
            }
        );
        assert_eq!(
            parts[2],
            Cond::Cmp {
                field: 1,
                op: Op::In,
                arg: Arg::Many(vec!["0xab".into()])
            }
        );
        assert_eq!(
            sql(&c),
            "(((t.action) IS DISTINCT FROM $1::text) AND ((t.amount) >= $2::numeric) AND (coalesce((t.wallet) = ANY($3::text[]), false)))"
        );
    }

    #[test]
    fn nested_and_or_become_parenthesised_sql() {
        let c = parse(serde_json::json!({"or": [{"blockNumber_lt": 5}, {"and": [{"wallet_starts_with": "0xab"}, {"pools_contains": ["0x01"]}]}]})).expect("a valid filter");
        assert_eq!(
            sql(&c),
            "(((t.block_number) < $1::int8) OR ((coalesce(starts_with((t.wallet), $2::text), false)) AND (coalesce((t.pools) @> $3::text[], false))))"
        );
        assert_eq!(
            sql(&parse(serde_json::json!({"wallet": null})).expect("a valid filter")),
            "((t.wallet) IS NULL)"
        );
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let err = |j| parse(j).expect_err("a refused filter");
        assert_eq!(
            err(serde_json::json!({"amount_contains": "1"})),
            "Thing_filter has no field `amount_contains`"
        );
        assert_eq!(
            err(serde_json::json!({"colour": "red"})),
            "Thing_filter has no field `colour`"
        );
        assert!(err(serde_json::json!({"amount_gt": "ten"})).contains("not a decimal number"));
        assert!(err(serde_json::json!({"wallet": "vitalik"})).contains("not 0x-hex"));
        assert!(err(serde_json::json!({"action": "STEAL"})).contains("not a LendingAction"));
        assert!(err(serde_json::json!({"blockNumber_in": 5})).contains("takes a list"));
        assert!(err(serde_json::json!({"or": []})).contains("at least one"));
        let mut deep = serde_json::json!({"blockNumber": 1});
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = serde_json::json!({"and": [deep]});
        }
        assert!(err(deep).contains("nested deeper"));
        let many: Vec<i64> = (0..=MAX_IN_LIST as i64).collect();
        assert!(err(serde_json::json!({"blockNumber_in": many})).contains("at most"));
    }
}
