// Command xlsnap is the RFC's xl snapshot commands as a program: it takes,
// lists, reverts and deletes snapshots of a running QEMU domain through
// its QMP socket, with the metadata kept in xl syntax under a store root.
//
// Usage:
//
//	xlsnap [global options] snapshot-create [-n NAME] [-d DESCRIPTION] [--disk-only] [--external] [--live] [--quiesce] DOMAIN
//	xlsnap [global options] snapshot-list [--long | --tree | --json] [--strict] DOMAIN [NAME]
//	xlsnap [global options] snapshot-revert -n NAME [--running | --paused] [--force] DOMAIN
//	xlsnap [global options] snapshot-delete -n NAME [--children] [--metadata-only] DOMAIN
//
// DOMAIN is the path of the domain's QMP unix socket. Global options go
// before the subcommand or after it:
//
//	--store DIR            metadata root (default /var/lib/xen/snapshots)
//	--uuid UUID            the domain's UUID, required when QEMU runs without -uuid
//	--launch-cmd CMDLINE   QEMU command line to restart the domain with (split
//	                       like a shell would, but no shell runs it)
//	--launch-config FILE   the same, one argv word per line
//	--agent SOCKET         the guest agent's socket, for snapshot-create --quiesce
//	--memory-dir DIR       where external snapshots' memory files go (default:
//	                       the domain's directory under --store)
//	--timeout DURATION     how long to wait for the monitor and the agent (default 10s)
//
// The metadata of a domain is keyed by the UUID QEMU reports (query-uuid).
// Without -n, snapshot-create names the snapshot after the creation time
// in epoch seconds; it prints the name it used. --live implies --external:
// only an external snapshot can write memory while the guest runs.
// snapshot-delete prints the names it deleted.
//
// --quiesce freezes the guest's filesystems through the QEMU guest agent
// while the snapshot is taken, and thaws them after. It needs --agent
// SOCKET: the host end of the agent's channel, e.g. QEMU started with
// -chardev socket,path=SOCKET,server=on,wait=off,id=qga0 -device
// virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
// and qemu-ga running in the guest. Other commands ignore --agent.
//
// snapshot-list prints one snapshot per line, name and creation time, as
// xl list does; snapshots found in the images with no record follow,
// marked "(untracked)". --long prints every field, --tree draws the
// parent/child tree and marks the current snapshot with "*". --json prints
// a JSON array of objects (untracked snapshots are not included):
//
//	name           string
//	description    string
//	creation_time  string, RFC 3339 in UTC
//	state          string: running, paused, shutoff or disk-only
//	parent         string, "" for a root
//	current        bool
//	memory         object: kind (none, internal, external), node, file
//	disks          array of objects:
//	    device, file, kind (internal, external), id, name, overlay   strings
//	    vm_state_size   integer, bytes
//	    date            string, RFC 3339 in UTC ("" when QEMU reported none)
//	    vm_clock        string, the guest clock as HH:MM:SS.mmm
//	problems       array of strings: where the record and QEMU disagree
//	downtime_ms    number: how long the guest was stopped by the snapshot
//
// With NAME, only that snapshot is printed (in --json still as an array).
//
// A record that cannot be read (damaged, unsafe or foreign) concerns only
// its own snapshot: snapshot-list shows it as a problem entry ("(unreadable
// record: WHY)"; in --json an object with state "unreadable", the reason
// in problems and the other strings empty) and still exits 0, unless
// --strict is given: then it exits 1 after printing the listing. The other
// snapshots can be reverted and deleted, and
// snapshot-delete --metadata-only -n NAME removes the bad record.
//
// A failed command prints one line on stderr naming the snapshot and what
// went wrong, and exits with status 1; a usage error exits with status 2.
// While a memory state is written and stderr is a terminal, a progress bar
// is drawn on stderr.
//
// Reverting an external snapshot restarts QEMU: it needs --launch-cmd or
// --launch-config, whose command line must serve QMP on DOMAIN (e.g.
// -qmp unix:DOMAIN,server=on,wait=off) and name the disks' images; the
// images are replaced by those the revert asks for. Without one such a
// revert is refused. QEMU's output goes to qemu.log in the domain's
// directory under --store (or under --memory-dir for a store that is not a
// directory).
//
// When no QEMU serves DOMAIN (nothing listens, or the socket file is
// missing) and --launch-cmd or --launch-config and --uuid are given, a
// revert that restarts QEMU may have been cut short after the old QEMU
// stopped: any command then finishes that revert first, which starts QEMU
// again, and goes on. With no such revert pending it fails as before.
//
// The command logic is the package xlsnapcli, so that another build of
// xlsnap can bring its own store (store/etcdstore's cmd/xlsnap-etcd keeps
// the metadata in etcd).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmsnap/vmsnap/examples/xlsnap/xlsnapcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := xlsnapcli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, xlsnapcli.Config{})
	stop()
	os.Exit(code)
}
