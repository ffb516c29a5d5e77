//! One listen address of a set, and what this process holds for it: its socket, the
//! strategy its group got, its steering context and slot.

use std::net::SocketAddr;
use std::sync::Arc;

use super::held::HeldSocket;
use crate::spec::{self, Options};
use crate::steering::{SlotClaim, Steering, Unlisted};
use crate::strategy::Applied;

/// One listen address of a set, and what this process holds for it.
#[derive(Debug)]
pub struct Listener {
    /// The address to bind. After the first open its port is the one the kernel chose for
    /// port 0, so every later socket joins the same group.
    pub(crate) addr: SocketAddr,
    pub(crate) options: Options,
    pub(crate) fd: Option<HeldSocket>,
    /// How this listener's group keeps a leaving socket's queue; set when it is opened.
    pub(crate) applied: Option<Applied>,
    /// The group's steering context, when the library's steering program runs it: set by
    /// the master's open and inherited by the workers forked after it.
    pub(crate) steering: Option<Arc<Steering>>,
    /// This worker's slot in it (dropped after `fd`, which frees the slot).
    pub(crate) claim: Option<SlotClaim>,
    /// Or, when the group's table was full, the record that this worker is in the group
    /// without a slot (it gets its share from the kernel's hash meanwhile).
    pub(crate) unlisted: Option<Unlisted>,
}

impl Listener {
    pub(crate) fn new(addr: SocketAddr, options: Options) -> Self {
        Listener { addr, options, fd: None, applied: None, steering: None, claim: None, unlisted: None }
    }

    /// The address its sockets bind: after the first open, with the port the kernel chose
    /// for port 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its socket options, as added.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The strategy its group got when it was last opened in this set, and why; `None`
    /// before the first open.
    pub fn applied(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// Whether the library's steering program runs its group (see [`Set::watch`]).
    ///
    /// [`Set::watch`]: crate::Set::watch
    pub fn is_steered(&self) -> bool {
        self.steering.is_some()
    }

    /// The canonical spec text: numeric address, the port bound, non-default options.
    pub fn spec_text(&self) -> String {
        spec::canonical(&self.addr, &self.options)
    }

    /// Closes this process's socket and frees its slot; whether there was a socket.
    pub(crate) fn close(&mut self) -> bool {
        let had = self.fd.take().is_some();
        self.claim = None;
        self.unlisted = None;
        had
    }
}
