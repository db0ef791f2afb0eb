//! Provisioning through the table admin API: create a table with its column families and their
//! garbage-collection policies, idempotently (an existing table is fine; missing families are added).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::{
    gc_rule::{Rule, Union},
    modify_column_families_request::{modification::Mod, Modification},
    table::View,
    ColumnFamily, CreateTableRequest, DeleteTableRequest, GcRule, GetTableRequest,
    ModifyColumnFamiliesRequest, Table,
};
use serde::{Deserialize, Serialize};

use super::client::{AdminClient, BigtableError};
use super::config::check_family;
use crate::error::ConfigError;

/// Timeout of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A column family and its garbage-collection policy. With both limits set, a cell is collected when
/// either applies (a union rule); with neither, cells are kept forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilySpec {
    /// Family name (1-64 characters of `[-_.a-zA-Z0-9]`).
    pub name: String,
    /// Keep at most this many versions per column. Default: none.
    #[serde(default)]
    pub max_versions: Option<u32>,
    /// Collect cells older than this many seconds (by cell timestamp). Default: none.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

impl FamilySpec {
    /// A family keeping `n` versions per column.
    pub fn max_versions(name: impl Into<String>, n: u32) -> Self {
        FamilySpec {
            name: name.into(),
            max_versions: Some(n),
            max_age_secs: None,
        }
    }

    fn gc_rule(&self) -> Option<GcRule> {
        let versions = self.max_versions.map(|n| GcRule {
            rule: Some(Rule::MaxNumVersions(i32::try_from(n).unwrap_or(i32::MAX))),
        });
        let age = self.max_age_secs.map(|s| GcRule {
            rule: Some(Rule::MaxAge(prost_types::Duration {
                seconds: i64::try_from(s).unwrap_or(i64::MAX),
                nanos: 0,
            })),
        });
        match (versions, age) {
            (Some(v), Some(a)) => Some(GcRule {
                rule: Some(Rule::Union(Union { rules: vec![v, a] })),
            }),
            (v, a) => v.or(a),
        }
    }
}

/// A table to provision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Column families.
    pub families: Vec<FamilySpec>,
}

/// What [`provision_table`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provisioned {
    /// The table was created by this call.
    pub created_table: bool,
    /// Families added to an existing table.
    pub added_families: Vec<String>,
    /// Families that exist with a different GC policy (left as they are; change them deliberately).
    pub differing_families: Vec<String>,
}

impl AdminClient {
    fn table_path(&self, table: &str) -> String {
        format!("{}/tables/{table}", self.instance_path)
    }

    /// The families of `table` and their GC rules, or `None` when the table does not exist.
    pub async fn get_table(
        &self,
        table: &str,
        timeout: Duration,
    ) -> Result<Option<HashMap<String, ColumnFamily>>, BigtableError> {
        let name = self.table_path(table);
        let req = self
            .request(
                "GetTable",
                GetTableRequest {
                    name: name.clone(),
                    view: View::SchemaView as i32,
                },
                &format!("name={name}"),
                timeout,
            )
            .await?;
        match self.client.clone().get_table(req).await {
            Ok(t) => Ok(Some(t.into_inner().column_families)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(BigtableError::from_status("GetTable", &s)),
        }
    }

    /// Creates `table` with `spec`'s families unless it exists, then adds the families it lacks.
    /// Idempotent; safe to run from several processes at once.
    pub async fn provision_table(
        &self,
        table: &str,
        spec: &TableSpec,
    ) -> Result<Provisioned, BigtableError> {
        super::config::check_table_like("bigtable.table", table, 50)
            .map_err(|e| BigtableError::InvalidElement(e.to_string()))?;
        for f in &spec.families {
            check_family("bigtable.families", &f.name)
                .map_err(|e| BigtableError::InvalidElement(e.to_string()))?;
        }
        let mut out = Provisioned::default();
        let existing = match self.get_table(table, ADMIN_TIMEOUT).await? {
            Some(families) => families,
            None => {
                let column_families: HashMap<String, ColumnFamily> = spec
                    .families
                    .iter()
                    .map(|f| {
                        (
                            f.name.clone(),
                            ColumnFamily {
                                gc_rule: f.gc_rule(),
                                value_type: None,
                            },
                        )
                    })
                    .collect();
                let req = self
                    .request(
                        "CreateTable",
                        CreateTableRequest {
                            parent: self.instance_path.clone(),
                            table_id: table.to_string(),
                            table: Some(Table {
                                column_families,
                                ..Table::default()
                            }),
                            initial_splits: Vec::new(),
                        },
                        &format!("parent={}", self.instance_path),
                        ADMIN_TIMEOUT,
                    )
                    .await?;
                match self.client.clone().create_table(req).await {
                    Ok(_) => {
                        tracing::info!(
                            table,
                            families = spec.families.len(),
                            "created Bigtable table"
                        );
                        out.created_table = true;
                        return Ok(out);
                    }
                    // Another process created it meanwhile: fall through to adding families.
                    Err(s) if s.code() == tonic::Code::AlreadyExists => self
                        .get_table(table, ADMIN_TIMEOUT)
                        .await?
                        .unwrap_or_default(),
                    Err(s) => return Err(BigtableError::from_status("CreateTable", &s)),
                }
            }
        };
        let mut modifications = Vec::new();
        for f in &spec.families {
            match existing.get(&f.name) {
                None => {
                    modifications.push(Modification {
                        id: f.name.clone(),
                        update_mask: None,
                        r#mod: Some(Mod::Create(ColumnFamily {
                            gc_rule: f.gc_rule(),
                            value_type: None,
                        })),
                    });
                    out.added_families.push(f.name.clone());
                }
                Some(cf) if cf.gc_rule != f.gc_rule() => {
                    tracing::warn!(table, family = %f.name, "Bigtable family exists with a different GC policy; left unchanged");
                    out.differing_families.push(f.name.clone());
                }
                Some(_) => {}
            }
        }
        if !modifications.is_empty() {
            let name = self.table_path(table);
            let req = self
                .request(
                    "ModifyColumnFamilies",
                    ModifyColumnFamiliesRequest {
                        name: name.clone(),
                        modifications,
                        ignore_warnings: false,
                    },
                    &format!("name={name}"),
                    ADMIN_TIMEOUT,
                )
                .await?;
            match self.client.clone().modify_column_families(req).await {
                Ok(_) => {}
                // A concurrent provisioner added the same family: check that all are there now.
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let now = self
                        .get_table(table, ADMIN_TIMEOUT)
                        .await?
                        .unwrap_or_default();
                    if let Some(missing) = spec.families.iter().find(|f| !now.contains_key(&f.name))
                    {
                        return Err(BigtableError::from_status(
                            "ModifyColumnFamilies",
                            &tonic::Status::not_found(format!(
                                "family '{}' still missing",
                                missing.name
                            )),
                        ));
                    }
                }
                Err(s) => return Err(BigtableError::from_status("ModifyColumnFamilies", &s)),
            }
            tracing::info!(table, added = ?out.added_families, "added Bigtable column families");
        }
        Ok(out)
    }

    /// Deletes `table` (tests and tools). A missing table is not an error.
    pub async fn delete_table(&self, table: &str) -> Result<(), BigtableError> {
        let name = self.table_path(table);
        let req = self
            .request(
                "DeleteTable",
                DeleteTableRequest { name: name.clone() },
                &format!("name={name}"),
                ADMIN_TIMEOUT,
            )
            .await?;
        match self.client.clone().delete_table(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(BigtableError::from_status("DeleteTable", &s)),
        }
    }

    /// The family names of `table`, sorted, or `None` when it does not exist.
    pub async fn family_names(&self, table: &str) -> Result<Option<Vec<String>>, BigtableError> {
        Ok(self.get_table(table, ADMIN_TIMEOUT).await?.map(|f| {
            let sorted: BTreeMap<_, _> = f.into_iter().collect();
            sorted.into_keys().collect()
        }))
    }
}

/// The `cbt` commands that create `table` with `families` (for one-line error hints).
pub fn cbt_hint(project: &str, instance: &str, table: &str, families: &[String]) -> String {
    let mut s = format!(
        "; create it with `cbt -project {project} -instance {instance} createtable {table}"
    );
    if !families.is_empty() {
        s.push_str(&format!(" families={}", families.join(",")));
    }
    s.push_str("` or fluxo_gcp::bigtable::AdminClient::provision_table");
    s
}

/// A [`ConfigError::NotFound`] for a missing table.
pub(crate) fn table_not_found(cfg: &super::config::ValidConfig) -> ConfigError {
    ConfigError::NotFound {
        service: "Bigtable",
        kind: "table",
        name: cfg.table_path.clone(),
        hint: cbt_hint(&cfg.project, &cfg.instance, &cfg.table, &cfg.families),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_rules() {
        assert_eq!(
            FamilySpec::max_versions("f", 1).gc_rule(),
            Some(GcRule {
                rule: Some(Rule::MaxNumVersions(1))
            })
        );
        let both = FamilySpec {
            name: "f".into(),
            max_versions: Some(2),
            max_age_secs: Some(60),
        };
        assert!(
            matches!(both.gc_rule(), Some(GcRule { rule: Some(Rule::Union(u)) }) if u.rules.len() == 2)
        );
        let none = FamilySpec {
            name: "f".into(),
            max_versions: None,
            max_age_secs: None,
        };
        assert_eq!(none.gc_rule(), None);
    }

    #[test]
    fn hint_is_one_line() {
        let h = cbt_hint("p", "i", "t", &["a".into(), "b".into()]);
        assert!(h.contains("createtable t families=a,b"));
        assert!(!h.contains('\n'));
    }
}
