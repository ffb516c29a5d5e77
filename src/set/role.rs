//! Where a set stands in the lifecycle, and which calls each role allows: one table.
//!
//! ```text
//!            open                     release
//!   Empty ───────────▶ MasterOpen ───────────────▶ Released ──open (reload, revert)──▶ MasterOpen
//!     │                   │ (child after fork)         │ (child after fork)
//!     │ open_single       └─ adopt ─▶ Adopted          └─ bind ─▶ Bound
//!     ▼                                                 retire (Adopted, Bound, Single,
//!   Single                                                      MasterOpen) ─▶ Released
//! ```
//!
//! Pure: [`transition`] says what a call does in a role, or why the role refuses it, and
//! the set applies it only when the call's work succeeded.

use std::ffi::CStr;

/// Where a set stands in the lifecycle; also tells which process is holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Specs only, no sockets yet.
    Empty,
    /// The master holds unconfigured sockets.
    MasterOpen,
    /// The master closed its sockets after forking the first worker; specs and ports kept.
    Released,
    /// The first worker took over the master's sockets and configured them.
    Adopted,
    /// A worker bound and configured its own sockets.
    Bound,
    /// One process opened and configured (no master).
    Single,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Empty, Role::MasterOpen, Role::Released, Role::Adopted, Role::Bound, Role::Single];

    /// A static, NUL-terminated name for logs ("master-open", "adopted"...).
    pub fn name(self) -> &'static CStr {
        match self {
            Role::Empty => c"empty",
            Role::MasterOpen => c"master-open",
            Role::Released => c"released",
            Role::Adopted => c"adopted",
            Role::Bound => c"bound",
            Role::Single => c"single",
        }
    }

    pub fn as_str(self) -> &'static str {
        self.name().to_str().expect("ASCII names")
    }

    /// No socket held: specs may change, and a new open may start.
    pub fn holds_no_sockets(self) -> bool {
        matches!(self, Role::Empty | Role::Released)
    }
}

/// A call that depends on the set's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Adding a listen spec.
    Add,
    /// Changing what the next open applies (strategy, program); names the change.
    Configure(&'static str),
    /// The master's open (also a reload's, and a reverting old master's).
    Open,
    /// A process without a master opens and configures.
    OpenSingle,
    /// Closing the sockets held, keeping specs and ports.
    Release,
    /// The first worker takes over the master's sockets.
    Adopt,
    /// Another worker binds its own.
    Bind,
    /// A process leaves its groups.
    Retire,
}

/// Why a role refuses a call: an errno (EALREADY for sockets already held, EINVAL for a
/// call that needs sockets) and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub errno: i32,
    pub message: String,
}

/// The role after `op` in `role`, or why `role` refuses it.
pub(crate) fn transition(role: Role, op: Op) -> Result<Role, Refusal> {
    use Role::*;
    let r = role.as_str();
    let refuse = |errno: i32, message: String| Err(Refusal { errno, message });
    let holds_sockets = |what: &str| {
        refuse(libc::EALREADY, format!("cannot {what}: the set already holds sockets ({r}); release it first"))
    };
    match (op, role) {
        (Op::Add | Op::Configure(_), Empty | Released) => Ok(role),
        (Op::Add, _) => refuse(
            libc::EALREADY,
            format!("the set already holds sockets ({r}); add specs before opening, or after release"),
        ),
        (Op::Configure(what), _) => {
            refuse(libc::EALREADY, format!("cannot {what}: the set already holds sockets ({r})"))
        }
        (Op::Open, Empty | Released) => Ok(MasterOpen),
        (Op::OpenSingle, Empty | Released) => Ok(Single),
        (Op::Open | Op::OpenSingle, _) => holds_sockets("open"),
        (Op::Release, Released) => refuse(libc::EALREADY, "the set is already released (release called twice)".into()),
        (Op::Release, Empty) => refuse(
            libc::EINVAL,
            "the set holds no sockets to release (call reuseport_master_open first)".into(),
        ),
        (Op::Release, _) => Ok(Released),
        (Op::Adopt, MasterOpen) => Ok(Adopted),
        (Op::Adopt, Empty | Released) => refuse(
            libc::EINVAL,
            format!("the set holds no inherited sockets ({r}): the master must call reuseport_master_open before forking the first worker; other workers call reuseport_worker_bind"),
        ),
        (Op::Adopt, _) => holds_sockets("adopt"),
        (Op::Bind, Empty | Released) => Ok(Bound),
        (Op::Bind, _) => refuse(
            libc::EALREADY,
            format!("the set already holds sockets ({r}); a worker binds in a set the master released (fork after reuseport_master_release); a worker that inherited sockets calls reuseport_master_release first to close its copies"),
        ),
        (Op::Retire, MasterOpen | Adopted | Bound | Single) => Ok(Released),
        (Op::Retire, Empty | Released) => refuse(
            libc::EINVAL,
            format!("the set holds no sockets to retire ({r}); retire is for a worker leaving its groups"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    const OPS: [Op; 8] = [
        Op::Add,
        Op::Configure("set the strategy"),
        Op::Open,
        Op::OpenSingle,
        Op::Release,
        Op::Adopt,
        Op::Bind,
        Op::Retire,
    ];

    /// The whole table, written out: the role after each call, or its errno.
    #[rustfmt::skip]
    fn expected(role: Role, op: Op) -> Result<Role, i32> {
        const EALREADY: i32 = libc::EALREADY;
        const EINVAL: i32 = libc::EINVAL;
        let row: [Result<Role, i32>; 8] = match role {
            //      Add            Configure      Open             OpenSingle     Release         Adopt          Bind           Retire
            Empty => [Ok(Empty), Ok(Empty), Ok(MasterOpen), Ok(Single), Err(EINVAL), Err(EINVAL), Ok(Bound), Err(EINVAL)],
            MasterOpen => [Err(EALREADY), Err(EALREADY), Err(EALREADY), Err(EALREADY), Ok(Released), Ok(Adopted), Err(EALREADY), Ok(Released)],
            Released => [Ok(Released), Ok(Released), Ok(MasterOpen), Ok(Single), Err(EALREADY), Err(EINVAL), Ok(Bound), Err(EINVAL)],
            Adopted => [Err(EALREADY), Err(EALREADY), Err(EALREADY), Err(EALREADY), Ok(Released), Err(EALREADY), Err(EALREADY), Ok(Released)],
            Bound => [Err(EALREADY), Err(EALREADY), Err(EALREADY), Err(EALREADY), Ok(Released), Err(EALREADY), Err(EALREADY), Ok(Released)],
            Single => [Err(EALREADY), Err(EALREADY), Err(EALREADY), Err(EALREADY), Ok(Released), Err(EALREADY), Err(EALREADY), Ok(Released)],
        };
        row[OPS.iter().position(|o| *o == op).expect("listed")]
    }

    #[test]
    fn every_role_and_call_does_what_the_table_says() {
        for role in Role::ALL {
            for op in OPS {
                let got = transition(role, op).map_err(|r| r.errno);
                assert_eq!(got, expected(role, op), "{op:?} in {role:?}");
            }
        }
    }

    #[test]
    fn every_refusal_names_the_role_or_the_missing_step() {
        for role in Role::ALL {
            for op in OPS {
                if let Err(r) = transition(role, op) {
                    assert!(
                        r.message.contains(role.as_str()) || r.message.contains("reuseport_master_open"),
                        "{op:?} in {role:?}: {}",
                        r.message
                    );
                }
            }
        }
    }

    #[test]
    fn only_a_role_without_sockets_accepts_new_specs_and_settings() {
        for role in Role::ALL {
            assert_eq!(transition(role, Op::Add).is_ok(), role.holds_no_sockets());
            assert_eq!(transition(role, Op::Configure("x")).is_ok(), role.holds_no_sockets());
        }
    }
}
