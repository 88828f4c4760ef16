// Package migrate saves a running QEMU's memory and device state to a file
// and loads it back, with QEMU's migration: the memory half of a full
// external snapshot and of its revert.
//
// Save writes the state of a guest to a new file in one of three modes
// (Mode) and one of two formats (Format), Load feeds such a file to a QEMU
// started with -incoming defer (CanLoad tells beforehand whether that QEMU
// reads the file's format),
// Settle brings a migration that a crashed process left running in QEMU to
// an end that leaves QEMU usable, and BackgroundSupported probes whether
// the live background-snapshot mode works on this QEMU and host.
//
// The package is organised by concern, each in one place:
//
//   - format.go: the memory file's formats (stream, mapped-ram), which
//     one a save writes by default, and which QEMU can read which.
//   - transport.go: how the stream reaches the file (the URI and what is
//     passed to QEMU for it): "fd:NAME" with getfd, "file:/dev/fdset/N"
//     with add-fd (QEMU ≥ 9.0), and mapped-ram with multifd and direct I/O.
//   - capabilities.go: which migration capabilities a save turns on and
//     off (a pure function of the current states, the mode and the
//     transport), and the background-snapshot probe.
//   - runstate.go: the guest's run state around a migration: when `cont`
//     is safe, when the guest ends in "postmigrate", and what a cancel does
//     in each migration status. Save and Settle both follow these rules.
//   - save.go, load.go, settle.go: the three operations.
//   - feed.go: how a load feeds a stream file into the pipe QEMU reads
//     (O_DIRECT reads into reused buffers, read ahead by a goroutine).
//   - trace.go: WithTrace, which timestamps each step of a save (where a
//     live save's pause goes).
//
// No path built by this package ever reaches QEMU: files are opened here
// and passed over the QMP socket (qmp.FileSender).
//
// # Which wins when
//
// Background-snapshot cannot be combined with mapped-ram or multifd in
// QEMU. A live save uses background-snapshot wherever QEMU (≥ 6.0) and the
// host offer it, in FormatStream: its pause is QEMU's read of guest RAM,
// the device state's save and the write protection (see below), it does not
// grow with how fast the guest dirties memory, and it writes each page
// once. Every other save (stopped, and pre-copy on QEMU 5.2 or hosts
// without userfaultfd write-protection) uses FormatMappedRAM where QEMU has
// it (≥ 9.0): measured on 10.0 it saves no slower than the stream and
// restores several times faster (parallel O_DIRECT reads), and it bounds a
// pre-copy file at the RAM size however much the guest dirties.
// DefaultFormat is that rule; a caller may ask for FormatStream instead
// (CanSave).
//
// # QEMU facts
//
// What follows was measured on qemu-system-x86_64 7.2 (Debian 12, TCG,
// Linux 6.x, as root); the comments next to the code that depends on a
// fact repeat it.
//
//   - A migration that completes leaves the guest in run state
//     "postmigrate" with its images inactivated; `cont` reactivates them
//     and runs the guest. A paused guest cannot get from "postmigrate"
//     back to "paused" without running, and QEMU refuses to migrate it
//     again ("Can't migrate the vm that was paused due to previous
//     migration") until it has run. Disk snapshots must therefore be taken
//     before the migration completes: before it starts (stopped and
//     background modes) or at the "pre-switchover" pause (pre-copy).
//   - Pre-copy with the capability pause-before-switchover stops the guest
//     (STOP), then waits in status "pre-switchover" with the images still
//     active until migrate-continue; migrate_cancel there resumes a guest
//     that ran (RESUME). Without that pause the disks could only be snapped
//     after QEMU inactivated them.
//   - background-snapshot (userfaultfd write-protect) runs in a thread of
//     its own: in status "setup" it reads one byte of every page of guest
//     RAM (so that pages never touched exist to be protected), then turns
//     the status "active", stops the guest (STOP, unless it is paused
//     already), saves the device state, write-protects RAM and starts the
//     guest again from a bottom half. QEMU 7.2 starts it with vm_start
//     even when the guest was paused before the migration started: so it
//     is used only for a running guest, and atStop must have returned
//     before migrate. QEMU ≥ 9.0 (read in its source; run on 10.0)
//     instead puts the run state back to what it was when its thread
//     stopped the guest: a guest Save stopped stays paused for the whole
//     save (0.2 s and more), so Save resumes it itself once RAM is
//     protected, and atStop can run after migrate, while QEMU reads RAM.
//     No event marks the protection (10.0 sends MIGRATION setup, active,
//     completed, and "active" comes before the thread stops the guest);
//     the first RAM page written, seen as query-migrate's ram.remaining
//     below ram.total, comes after it. It refuses pause-before-switchover
//     and most other capabilities ("Background-snapshot is not compatible
//     with ...") and ignores max-bandwidth. A `cont` before the protection
//     could run the guest ahead of it.
//   - Save stops the guest before migrate (the disks are snapped at the
//     instant the file describes), so the background snapshot's read of
//     all guest RAM is part of the guest's pause, and it costs per 4 KiB
//     page mapped. QEMU's guest RAM starts in transparent huge pages; the
//     first background snapshot's write protection splits them (QEMU's
//     AnonHugePages 136 MiB → 4 MiB for a 256 MiB guest) and they stay
//     split until the kernel's khugepaged merges them again (minutes).
//     Measured on a 2-core host that is itself a VM (perf: the thread in
//     ram_write_tracking_prepare): 1–2 ms for a 256 MiB guest on the
//     first snapshot of a QEMU process, 10–25 ms on later ones, on 7.2 and
//     10.0 alike; it grows with the guest's RAM size, not with its data.
//     BenchmarkMemoryLivePause (package vmsnap) measures the whole pause.
//   - migrate_cancel of a background snapshot poisons that QEMU for good.
//     Cancelled while "active" after the guest resumed, the next HMP
//     savevm fails with "uffd_change_protection() failed: ... errno=25",
//     "Error while writing VM state: Operation not permitted" (the
//     snapshot-save job fails the same way) and background-snapshot can no
//     longer even be switched on ("Background-snapshot is not compatible
//     with guest memory configuration"). Cancelled in "setup", the guest is
//     reported running but its vCPUs hang on write-protected memory and
//     QEMU no longer quits. A background snapshot let run to its end
//     leaves QEMU able to do both again. So nothing here ever cancels one.
//   - Status "completed" is reported before QEMU's migration thread has
//     finished: a savevm (or snapshot-save, or another migration) sent at
//     once can race it, and QEMU 7.2 then dies ("bg_migration_iteration_
//     finish: Unknown ending state 1"; seen once in six tries). The thread's
//     clean-up unregisters the "migration" instance of query-yank, so the
//     migration is over only once query-yank no longer lists it.
//   - Status "completed" is also reported while the run state is still
//     "finish-migrate" for a moment, and `cont` is refused then ("Migration
//     is not finalized yet").
//   - migrate takes over the descriptor named by getfd (closefd afterwards
//     says "not found"); a migrate that is refused leaves it registered.
//   - A QEMU started with -incoming defer keeps the guest paused after
//     migrate-incoming when `stop` was sent before (it clears autostart);
//     query-migrate there reports only the status. An incoming migration
//     cannot be cancelled: when its stream ends early the load fails and
//     QEMU exits.
//   - QEMU 7.2's default max-bandwidth of 128 MiB/s would throttle a save
//     to a file; Save lifts it for the save and restores it. QEMU's default
//     downtime-limit of 300 ms lets a pre-copy save stop the guest with a
//     third of a second of writing left; a pre-copy save sets 10 ms.
//   - QEMU ≥ 9.1 warns "fd: migration to a file is deprecated. Use file:
//     instead" for "fd:" to a regular file (not to a pipe). "file:" takes
//     /dev/fdset/N (add-fd) since 9.0; with mapped-ram and direct-io QEMU
//     opens the fdset once without O_DIRECT (its main channel, unaligned
//     writes) and once per multifd channel with O_DIRECT, taking from the
//     set a descriptor whose access mode and O_DIRECT flag match, so both
//     must be in it (10.0). QEMU's duplicates are closed when the
//     migration ends; the set itself stays until remove-fd.
//   - A mapped-ram file starts with the same "QEVM" header and ends with
//     the same end-of-stream marks and device description as a stream
//     (the pages sit at fixed offsets in between), so StreamComplete
//     checks both formats. 7.2 cannot read it; Load refuses it there
//     before sending anything.
//   - Loading a stream, QEMU reads 32 KiB at a time. Fed through a pipe,
//     it reads as much per wake-up as the pipe holds, so the pipe is
//     enlarged to 1 MiB. Read by QEMU from the file itself, the file goes
//     through the page cache; on this project's test machine (a VM whose
//     kernel reports free pages to its host) the CPU time QEMU spent in
//     those reads varied from 0.25 to 3.4 s for the same 514 MiB file,
//     with no page faults of its own and no steal: the page cache's fresh
//     pages cost host faults. The feed's O_DIRECT reads avoid that.
package migrate
