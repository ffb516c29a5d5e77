//! The order in which a process binds its sockets: on each port, the address a process of
//! this server bound last comes first.
//!
//! Why: the kernel keeps one fast path per port for SO_REUSEPORT binds
//! (`sk_reuseport_match()`, net/ipv4/inet_connection_sock.c). It remembers the address of
//! the last bind that missed it, and a bind of another address misses it too: that bind
//! walks every socket bound to its address and port, TIME_WAIT ones included, holding the
//! port's bind-hash lock, which every connection accepted on the port and every TIME_WAIT
//! taken on it need too. On a busy port that is thousands to a hundred thousand sockets,
//! up to milliseconds during which no handshake on the port completes (measured in
//! docs/benchmarks.md, "Where reload100w's p99 goes"). Stock nginx binds nothing at a
//! reload; with the library every new worker binds one socket per address.
//!
//! A process that binds IPv4 and then IPv6 on one port leaves the fast path on IPv6, so
//! the next one's IPv4 bind walks: every worker walks. Binding first the address bound
//! last matches the fast path, and only the second bind misses: each worker then ends on
//! the other address from its predecessor, and the costly walk (of the address with the
//! TIME_WAIT sockets) comes at every other worker instead of every one. With both families
//! holding TIME_WAIT sockets, one walk a worker instead of two. No order does better while
//! each worker binds its own socket of each address.
//!
//! The groups' slot tables record when a process of this server last bound each group's
//! address (Steering::note_bind()); without a record (a group without steering, or the
//! first open) the configured order stands, and so does the place of every port that has
//! one address only.

/// The order in which to bind listeners on `port`s whose groups were last bound at
/// `last_bind` (CLOCK_MONOTONIC nanoseconds, 0 when unknown): the configured order, but
/// where a port has several addresses, the one bound last goes first among them (at the
/// place of that port's first address). A port of one address keeps its place, so a set
/// whose ports differ binds in its configured order.
pub(crate) fn bind_order(listeners: &[(u16, u64)]) -> Vec<usize> {
    let mut order = Vec::with_capacity(listeners.len());
    let mut done = vec![false; listeners.len()];
    for i in 0..listeners.len() {
        if done[i] {
            continue;
        }
        let port = listeners[i].0;
        // The first address of this port: bind the port's most recent one here (the
        // first of equal times, so unknown ones keep the configured order).
        let mut first = i;
        for (j, &(p, t)) in listeners.iter().enumerate().skip(i + 1) {
            if p == port && !done[j] && t > listeners[first].1 {
                first = j;
            }
        }
        order.push(first);
        done[first] = true;
        if first != i {
            order.push(i);
            done[i] = true;
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::bind_order;
    use crate::set::Set;

    #[test]
    fn the_address_bound_last_comes_first() {
        // IPv4 then IPv6 configured on one port; a predecessor bound IPv6 last.
        assert_eq!(bind_order(&[(80, 100), (80, 200)]), vec![1, 0]);
        assert_eq!(bind_order(&[(80, 200), (80, 100)]), vec![0, 1]);
    }

    #[test]
    fn unknown_times_keep_the_configured_order() {
        assert_eq!(bind_order(&[(80, 0), (80, 0), (80, 0)]), vec![0, 1, 2]);
        assert_eq!(bind_order(&[(80, 0), (80, 5), (80, 0)]), vec![1, 0, 2]);
    }

    #[test]
    fn addresses_on_ports_of_their_own_keep_the_configured_order() {
        assert_eq!(bind_order(&[(80, 10), (443, 20), (8080, 5)]), vec![0, 1, 2]);
    }

    #[test]
    fn each_port_starts_with_its_last_bound_address_in_its_own_place() {
        // 80: listeners 0 (v4), 2 (v6), v6 bound last; 443: 1 (v4), 3 (v6), v4 bound last;
        // 8080: 4 alone.
        let order = bind_order(&[(80, 10), (443, 40), (80, 20), (443, 30), (8080, 50)]);
        assert_eq!(order, vec![2, 0, 1, 3, 4]);
        // Three addresses on one port, the last of them bound last: it goes first, the
        // other two follow in their order.
        assert_eq!(bind_order(&[(80, 1), (80, 2), (80, 3)]), vec![2, 0, 1]);
    }

    #[test]
    fn workers_that_follow_the_rule_alternate_their_last_address() {
        // Model of the kernel's state: the address a port's fast path remembers is that of
        // the last bind that missed it. A worker of a generation binds both addresses in
        // the rule's order; count the binds that miss on each address.
        // The master bound v4 then v6 (and recorded it): the fast path is on v6.
        let mut last_bind = [(80u16, 1u64), (80, 2)]; // [v4, v6] as the tables record them
        let mut fast = 1usize;
        let mut misses = [0usize; 2];
        let mut clock = 2u64;
        for _worker in 0..100 {
            for i in bind_order(&last_bind) {
                if i != fast {
                    misses[i] += 1;
                    fast = i;
                }
                clock += 1;
                last_bind[i].1 = clock;
            }
        }
        // The configured order (v4, v6) misses twice a worker, 100 times on each address.
        assert_eq!(misses, [50, 50], "one miss a worker, on IPv4 at every other one");
    }

    /// The order of this set's last binds, as the groups' tables recorded them: the
    /// listener indices, earliest first.
    fn recorded_order(set: &Set) -> Vec<usize> {
        let t: Vec<u64> = set.listeners.iter().map(|l| l.steering.as_ref().unwrap().last_bind_ns()).collect();
        assert!(t.iter().all(|&x| x > 0), "every bind recorded: {t:?}");
        let mut order: Vec<usize> = (0..t.len()).collect();
        order.sort_by_key(|&i| t[i]);
        order
    }

    fn worker_of(m: &Set) -> Set {
        let mut w = Set::new();
        for l in m.listeners() {
            w.add_spec(&l.addr().to_string()).unwrap();
        }
        w.inherit(m).unwrap();
        w.worker_bind().unwrap();
        w
    }

    #[test]
    fn each_worker_binds_first_the_address_its_predecessor_bound_last() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP each_worker_binds_first_the_address_its_predecessor_bound_last: needs CAP_BPF for the slot tables (run as root)");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut m = Set::new();
        m.add_spec(&format!("127.0.0.1:{port}")).unwrap();
        m.add_spec(&format!("[::1]:{port}")).unwrap();
        m.master_open().unwrap();
        assert!(m.steered(0).unwrap() && m.steered(1).unwrap(), "both groups steered");
        // The first open has no record yet: the configured order, IPv6 last.
        assert_eq!(recorded_order(&m), vec![0, 1]);
        let mut workers = Vec::new();
        for n in 0..4 {
            let w = worker_of(&m);
            // The predecessor ended on IPv6 (the master, then every second worker): this
            // one starts there and ends on IPv4, and the next one the other way round.
            let expect = if n % 2 == 0 { vec![1, 0] } else { vec![0, 1] };
            assert_eq!(recorded_order(&w), expect, "worker {n}");
            workers.push(w);
        }
    }
}
