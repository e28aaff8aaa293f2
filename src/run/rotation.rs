//! Database password rotation during a run: each web server's accounts get their new
//! password on the primary just before its application restarts with it.

use anyhow::{Context, Result};

use super::report::host_failure;
use crate::database;
use crate::diff::Changes;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::protocol;
use crate::protocol::database::{DbCatchUp, DbPrimary, DbSpec};
use crate::remote::Remote;
use crate::secrets::Secrets;

/// Database passwords that change in this run, on the primary: each web server's own
/// account is changed just before its application restarts with the new password
/// (drained), so the others keep working with theirs until their turn.
pub(super) struct Rotation<'a> {
    primary: &'a HostPlan,
    remote: &'a dyn Remote,
    /// The primary's database spec (accounts with password hashes).
    spec: DbSpec,
    /// user@host of each account whose password changes.
    accounts: Vec<String>,
}

pub(super) fn rotation<'a>(
    plan: &'a Plan,
    changes: &Changes,
    remotes: &[&'a dyn Remote],
    secrets: &Secrets,
) -> Result<Option<Rotation<'a>>> {
    let Some(primary) = plan.db_primary() else {
        return Ok(None);
    };
    let Some(database::DbChange::ConvergePrimary { rotate, .. }) =
        changes.host(primary.name()).and_then(|hc| hc.db.as_ref())
    else {
        return Ok(None);
    };
    let Some(remote) = database::remote_of(plan, remotes, primary.name()) else {
        return Ok(None);
    };
    if rotate.is_empty() {
        return Ok(None);
    }
    let db = primary
        .db
        .as_ref()
        .context("the primary has a database plan")?;
    Ok(Some(Rotation {
        primary,
        remote,
        spec: database::db_spec(db, secrets)?,
        accounts: rotate.clone(),
    }))
}

/// Changes the database accounts a web server's application uses (if their password
/// changes in this run) on the primary, and waits until the host's own database (a
/// replica it reads from) has the change too.
pub(super) async fn rotate_accounts_of(
    hp: &HostPlan,
    r: &dyn Remote,
    rot: &Rotation<'_>,
    printer: &Printer,
) -> Result<()> {
    let suffix = format!("@{}", hp.host.address);
    let spec = database::accounts_only(&rot.spec, |a| {
        a.ends_with(&suffix) && rot.accounts.iter().any(|x| x == a)
    });
    if spec.users.is_empty() {
        return Ok(());
    }
    printer.status(
        "Database",
        format!(
            "{}: new password for {}'s account(s)",
            rot.primary.name(),
            hp.name()
        ),
    );
    let answer = protocol::call(rot.remote, &DbPrimary { db: spec })
        .await
        .map_err(|e| {
            host_failure(
                rot.primary.name(),
                &format!("changing {}'s database password", hp.name()),
                &e,
            )
        })?;
    if hp
        .db
        .as_ref()
        .is_some_and(|d| d.role == crate::plan::DbRole::Replica)
    {
        let request = DbCatchUp {
            gtid: answer.gtid,
            timeout_s: 30,
        };
        protocol::call(r, &request).await.map_err(|e| {
            host_failure(
                hp.name(),
                "waiting for the password change to replicate",
                &e,
            )
        })?;
    }
    Ok(())
}
