// Package fakeqemu is a fake QEMU: a QMP server on a unix socket that
// simulates what vmsnap drives (run state, qcow2 block nodes with internal
// snapshots and backing chains, transactions, the snapshot-save/-load/
// -delete jobs, migration to a passed file descriptor and an HMP subset),
// so that unit tests run in milliseconds and faults can be injected.
//
// It imports only the standard library and speaks the QMP wire protocol,
// so it tests any client, not just vmsnap's.
//
// # Use
//
//	s, err := fakeqemu.Start(fakeqemu.Options{Disks: []fakeqemu.Disk{
//		{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"},
//	}})
//	defer s.Close()
//	// dial s.Addr(), then assert on s.DiskSnapshots("disk0"), s.Counter(), ...
//
// The server serves one client at a time, as a QEMU monitor does: a second
// connection is accepted but gets its greeting only after the first one
// disconnects. After a dropped connection the next client is served, so a
// test can reconnect and inspect.
//
// # Simulated guest
//
// The guest has a counter that advances by one for every QMP command
// received while the guest runs (deterministic, unlike wall time) and a
// content byte per image (WriteDisk, DiskContent). Internal snapshots save
// each image's content; the vmstate image's snapshot also saves the
// counter, which snapshot-load and HMP loadvm restore. HMP
// `xp /1gx <CounterAddr>` shows the counter, as a test guest's memory
// would. External snapshots (blockdev-snapshot-sync) add an overlay node
// on top of the disk's chain; the old image becomes read-only and keeps
// its content, writes go to the overlay. No image files are written
// (Options.CreateOverlays creates placeholder overlay files).
// migrate to "fd:NAME" (after getfd) writes a stream of
// Options.MemoryBytes: StreamMagic, version 3, zero filler, and the
// counter as the last 8 bytes; it honours max-bandwidth and migrate_cancel
// and leaves a pre-copy guest in "postmigrate", a background-snapshot one
// running.
//
// # Profiles
//
// QEMU72 imitates 7.2; QEMU52 imitates 5.2, which lacks the snapshot jobs
// (so HMP savevm/loadvm/delvm must be used) and background-snapshot.
// query-commands lists exactly the commands the fake implements under the
// profile, not the full list of the real version.
//
// # Faults
//
// Fail fails a command (every call or the Nth), a transaction action of a
// type or on a device, or an HMP command; FailJob makes a job conclude
// with an error; DropOn closes the connection when a command arrives;
// DropMidJob closes it after a job has started (the job carries on);
// Delay holds a reply; EmitEvent sends an event now; EventBeforeReply sends
// one just before a command's reply, even before the qmp_capabilities
// reply.
//
// # Checked against real QEMU 7.2
//
// The reply shapes, error classes and messages, and event sequences were
// captured from qemu-system-x86_64 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)
// started with -S, two virtio-blk disks given as -blockdev qcow2 nodes
// (one over a backing file, one with a qemu-img snapshot), and driven
// over its QMP socket. TestConformanceWithRealQEMU keeps that true: it
// runs one script of about 80 exchanges on a real QEMU and on the fake
// with the same disks and requires identical transcripts after masking
// times and sizes. The script covers: the greeting; negotiation errors;
// unknown commands and parameters; query-status through prelaunch,
// running, paused and restore-vm; STOP/RESUME events (none when the state
// does not change); transactions of blockdev-snapshot-internal-sync
// (success, existing name, same name twice, protocol node, qdev id, empty
// name, bad action type) and of blockdev-snapshot-sync (overlay node name
// missing or in use, success, same file as the backing file, lookup by
// device); blockdev-snapshot-delete-internal-sync and its errors;
// snapshot-save/-load/-delete job statuses (created, running, then
// waiting, pending, concluded, or aborting, concluded), query-jobs
// entries and errors (existing tag, unknown node, vmstate outside devices,
// no devices, missing tag, disk-only snapshot), job-dismiss and its null
// event, duplicate job ids; query-migrate after a snapshot-save; HMP info
// snapshots (the "present on all disks" and "partial" tables, "There is no
// snapshot available.", column layout), info status, savevm (replacing an
// existing tag), loadvm and delvm errors, unknown commands; query-block
// after external snapshots; migrate to an unknown fd, getfd without a
// descriptor, closefd.
//
// Also captured from real QEMU but not in the automated script (they need
// a descriptor or timing): the migration event order (MIGRATION setup,
// MIGRATION_PASS 1, active, STOP, MIGRATION_PASS 2, completed), the
// query-migrate shapes while active and after completion or cancel, the
// "postmigrate" state and the refusal to migrate again from it, getfd
// consumption by migrate, the migration capability and parameter lists,
// and xp's output format.
//
// Not checked against real QEMU: the QEMU 5.2 profile (no 5.2 binary
// here: its command set is the 7.2 behaviour minus the snapshot jobs and
// background-snapshot), the fake's own messages for things it does not
// simulate (they say "fakeqemu"), migration write failures, HMP loadvm
// and delvm without a name, and xp with a count above 1.
package fakeqemu
