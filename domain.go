package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmsnap/vmsnap/hmp"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// Options bind a Domain.
type Options struct {
	// UUID is the domain's UUID, the key of its metadata. When empty it is
	// read from QEMU with query-uuid; a QEMU started without -uuid reports
	// the nil UUID, and Open then fails asking for one.
	UUID string
	// Store keeps the snapshot metadata; it is required (for the xl
	// layout: store.NewFileStore(store.DefaultRoot)).
	Store store.Store
	// Config is recorded with every snapshot unless CreateSpec.Config
	// overrides it: the domain's configuration, opaque to vmsnap.
	Config []byte
	// Disks describe a shut-off domain's images for OpenOffline.
	Disks []OfflineDisk
	// QemuImg is the qemu-img binary used for shut-off domains and image
	// work; default "qemu-img" from PATH.
	QemuImg string
	// Launcher stops and starts the domain's QEMU; reverting an external
	// snapshot, or a disk-only one of a running domain, needs it.
	Launcher Launcher
	// Agent is the guest agent used by the Quiesce flag.
	Agent GuestAgent
	// MemoryDir is where external snapshots' memory files go. Empty means
	// beside the metadata (the domain's directory of a *store.FileStore);
	// another Store needs it set.
	MemoryDir string
	// NoBackgroundSnapshot makes Live snapshots use pre-copy even where
	// QEMU and the host support background-snapshot.
	NoBackgroundSnapshot bool
	// MappedRAM writes the memory state of stopped and pre-copy saves in
	// QEMU ≥ 9.0's mapped-ram format (multifd, O_DIRECT) where QEMU has it:
	// restored about 3.7 times faster than a stream here, and a live
	// pre-copy file never grows past the RAM size. Off by default: QEMU
	// 10.0.2 crashed in about one of five cancelled mapped-ram saves
	// (Op.Cancel, or settling a save a crash interrupted). The format is
	// recorded; a revert on a QEMU that cannot read it is refused before
	// anything is stopped.
	MappedRAM bool
	// ManagedChainChanges allows external snapshots of a domain whose QEMU
	// a manager runs from its own configuration (recognised: a go-qemu
	// LibvirtRPCMonitor wrapped with qmp.FromGoQEMU). An external snapshot
	// puts new overlays on top of the disks; libvirt does not learn of them
	// and restarts the domain on the frozen images, so the guest's later
	// writes land in the snapshot (List then reports
	// ProblemFrozenInUse). A libvirt driver that sets this keeps libvirt's
	// view in step: after each external create or revert it updates the
	// domain's disk sources to the new top images (Domain.Disks) in the
	// persistent definition, or takes external snapshots through
	// libvirt's own snapshot API instead.
	ManagedChainChanges bool
	// StateSaver writes and loads the memory state of full external
	// snapshots; nil means a QEMU migration to a passed descriptor (see
	// StateSaver).
	StateSaver StateSaver
	// Events, when not nil, is called with every event of the Domain's
	// operations (see Event): their phases, and the guest stops, resumes
	// and relaunches they cause, so a toolstack can tell vmsnap's pauses
	// from anyone else's. It is called synchronously and must not block.
	Events func(Event)
	// Logger, when not nil, receives each operation's phases and timings
	// at Info level and its QMP traffic at Debug level.
	Logger *slog.Logger
	// SyncIntents makes the intent of an internal snapshot's create
	// durable before QEMU is touched, as every other intent is. By
	// default that one intent is staged (store.Stage): written where the
	// next operation reads it, but not flushed, and made durable by the
	// commit that replaces it. A kill of this process or of QEMU, a cancel
	// or a full disk still leave an intent the next operation settles;
	// only a crash of the machine during the create can lose it. Then
	// what QEMU saved stays in the images, where List reports it as
	// untracked (or the record as unreadable), and, QEMU having died in
	// the save, the images may need the repair (qemu-img check -r all)
	// that Reconcile runs only for images a readable intent names: run it
	// by hand after such a crash, or set SyncIntents. It saves one flush
	// per internal create, 0.6–1.9 ms on this project's machines.
	SyncIntents bool
}

// OfflineDisk is one image of a shut-off domain.
type OfflineDisk struct {
	// Device names the disk in records and errors (e.g. "dev0", "xvda").
	Device string
	// File is the qcow2 image.
	File string
}

// Domain is one domain whose snapshots vmsnap manages: its QEMU monitor (nil
// for a shut-off domain), its UUID and its metadata store. A Domain is safe
// for concurrent use; operations on it are serialised by the store's
// per-domain lock, also across processes.
type Domain struct {
	uuid  string
	store store.Store
	opts  Options

	// mon and features change when a revert relaunches QEMU; operations
	// read them under the store lock, accessors under mu.
	mu       sync.Mutex
	mon      qmp.Monitor // nil when the domain is shut off
	features *qmp.Features
	bgProbe  *bool // background-snapshot support, probed once per QEMU
	// images reads and changes the disks: through mon, or with qemu-img
	// when the domain is shut off. vmstate saves, loads and deletes
	// internal memory states (nil when shut off).
	images  images
	vmstate *qemu.VMState

	img qemuimg.Runner // qemu-img, for image files outside QEMU
	key []byte         // the ownership key (see ownership.go), under mu
}

// Open binds a running domain: its monitor, its UUID (from query-uuid when
// opts.UUID is empty) and its store. It probes QEMU's features once.
//
// Open does not take the store lock. Callers that connect to the monitor
// themselves must do so before any operation takes the lock (monitor first,
// lock second), never while holding it.
func Open(ctx context.Context, mon qmp.Monitor, opts Options) (*Domain, error) {
	if mon == nil {
		return nil, &Error{Op: "open", Err: errors.New("nil monitor (use OpenOffline for a shut-off domain)")}
	}
	mon = logMonitor(mon, opts.Logger)
	// The probe and query-uuid go out together: one round trip.
	var (
		qemuUUID string
		uuidErr  error
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go func() { defer wg.Done(); qemuUUID, uuidErr = qemu.UUID(ctx, mon) }()
	feat, err := qmp.Probe(ctx, mon)
	wg.Wait()
	if err != nil {
		return nil, &Error{Op: "open", Domain: opts.UUID, Err: fmt.Errorf("probe QEMU: %w", err)}
	}
	if uuidErr != nil {
		return nil, &Error{Op: "open", Err: fmt.Errorf("query-uuid: %w", uuidErr)}
	}
	uuid := opts.UUID
	switch {
	case qemuUUID == "" || qemuUUID == qemu.NilUUID:
		if uuid == "" {
			return nil, &Error{Op: "open", Err: fmt.Errorf("%w: QEMU was started without -uuid; give the domain's UUID in Options.UUID", ErrInvalidDomain)}
		}
	case uuid == "":
		uuid = qemuUUID
	case !strings.EqualFold(uuid, qemuUUID):
		// Filing this domain's snapshots under another domain's records
		// would mix the two.
		return nil, &Error{Op: "open", Domain: uuid, Err: fmt.Errorf("%w: Options.UUID is %s but QEMU reports %s", ErrInvalidDomain, uuid, qemuUUID)}
	}
	d, err := newDomain(mon, uuid, opts)
	if err != nil {
		return nil, err
	}
	d.features = feat
	d.vmstate = qemu.NewVMState(mon, feat)
	return d, nil
}

// OpenOffline binds a shut-off domain: no QEMU process, only the image
// files in opts.Disks. Its internal disk snapshots are made, listed,
// reverted and deleted with qemu-img.
//
// A domain whose QEMU went down in the middle of a revert that restarts
// QEMU is bound with OpenOffline too, with opts.Launcher and without
// Disks: Reconcile then finishes the revert through the Launcher (or rolls
// it back onto the previous disks), and the Domain is online again.
func OpenOffline(ctx context.Context, uuid string, opts Options) (*Domain, error) {
	if len(opts.Disks) == 0 && opts.Launcher == nil {
		return nil, &Error{Op: "open", Domain: uuid, Err: fmt.Errorf("%w: a shut-off domain needs Options.Disks (or a Launcher, to finish an interrupted revert)", ErrNoDisks)}
	}
	return newDomain(nil, uuid, opts)
}

// Reconcile settles what interrupted operations left, as every mutating
// operation does first: it finishes or rolls back each intent a crash
// left in the store by asking QEMU (or the images) what really happened,
// restarting QEMU through the Launcher when a revert that restarts it was
// cut short. It returns the problems it could not settle.
//
// On a domain bound with OpenOffline and its disks after its QEMU died,
// it first repairs the qcow2 images a killed QEMU can leave damaged
// (ErrImageInUse while another process holds one), then settles what
// needs no QEMU. Revert intents and deletes whose merge QEMU must run are
// left, without an error, for the Reconcile of the running domain: start
// QEMU paused, Open it, Reconcile, and start the guest only if it is still
// in prelaunch (see README).
func (d *Domain) Reconcile(ctx context.Context) error {
	_, err := run(ctx, d, "reconcile", "", func(ctx context.Context, op *Op[struct{}], reconcileErr error) (struct{}, error) {
		return struct{}{}, reconcileErr
	}).Wait(ctx)
	return err
}

func newDomain(mon qmp.Monitor, uuid string, opts Options) (*Domain, error) {
	if err := store.ValidateDomain(uuid); err != nil {
		return nil, &Error{Op: "open", Domain: uuid, Err: fmt.Errorf("%w: %w", ErrInvalidDomain, err)}
	}
	st := opts.Store
	if st == nil {
		// No silent default: the xl layout's root is one explicit call.
		return nil, &Error{Op: "open", Domain: uuid, Err: fmt.Errorf("%w: Options.Store is nil; give the store to keep snapshot records in, e.g. store.NewFileStore(store.DefaultRoot) for the xl layout", ErrInvalidSpec)}
	}
	if opts.QemuImg == "" {
		opts.QemuImg = qemuimg.DefaultBinary
	}
	d := &Domain{mon: mon, uuid: uuid, store: st, opts: opts, img: qemuimg.Runner{Binary: opts.QemuImg}}
	if mon != nil {
		d.images = qmpImages{mon: mon}
	} else {
		d.images = fileImages{img: d.img, files: opts.Disks}
	}
	return d, nil
}

// fileStoreRoot returns the root directory of the domain's store when it
// is a file store, "" otherwise.
func (d *Domain) fileStoreRoot() string {
	if fs, ok := d.store.(*store.FileStore); ok {
		return fs.Root()
	}
	return ""
}

// UUID returns the domain's UUID.
func (d *Domain) UUID() string { return d.uuid }

// Monitor returns the domain's monitor (nil for a shut-off domain). A
// revert through the Launcher replaces it with the new process's monitor.
func (d *Domain) Monitor() qmp.Monitor {
	d.mu.Lock()
	defer d.mu.Unlock()
	return unwrapMonitor(d.mon)
}

// Features returns what the domain's QEMU supports (nil when shut off).
func (d *Domain) Features() *qmp.Features {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.features
}

// setMonitor binds the monitor of a newly started QEMU and probes it.
func (d *Domain) setMonitor(ctx context.Context, mon qmp.Monitor) error {
	mon = logMonitor(mon, d.opts.Logger)
	feat, err := qmp.Probe(ctx, mon)
	if err != nil {
		return fmt.Errorf("probe relaunched QEMU: %w", err)
	}
	d.mu.Lock()
	d.mon, d.features, d.bgProbe = mon, feat, nil
	d.images, d.vmstate = qmpImages{mon: mon}, qemu.NewVMState(mon, feat)
	d.mu.Unlock()
	return nil
}

// online reports whether the domain has a QEMU process bound.
func (d *Domain) online() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mon != nil
}

// DefaultName is the name a snapshot gets when none is given: the creation
// time in epoch seconds, as in the xl RFC.
func DefaultName(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// ValidateName reports whether name can name a snapshot; the error wraps
// ErrInvalidName. One rule holds for every backend (snapshot jobs, HMP,
// qemu-img) and every QEMU vmsnap supports, so any name it accepts can be
// created, listed, reverted and deleted everywhere: 1 to 64 bytes
// (store.MaxNameLen) of printable ASCII other than space, the quotes ' and
// " and the backslash, not starting with '-' (it would read as an option
// to HMP and qemu-img), '.' or containing '/' (see store.ValidateName and
// hmp.ValidateName). Names are never used as paths or shell words
// unescaped.
func ValidateName(name string) error {
	if err := store.ValidateName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidName, err)
	}
	if err := hmp.ValidateName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidName, err)
	}
	return nil
}

// guestState reads whether the guest runs.
func (d *Domain) guestState(ctx context.Context) (qmp.Status, error) {
	return qemu.Status(ctx, d.mon)
}

// disks returns the domain's disks as the bound images seam sees them.
func (d *Domain) disks(ctx context.Context) ([]Disk, error) { return d.images.disks(ctx) }

// restoreRunning makes a guest that was running before an operation run
// again. It uses its own short context: it must happen even when the
// operation's context was cancelled.
func (d *Domain) restoreRunning(ctx context.Context, wasRunning bool) error {
	if !wasRunning || d.mon == nil {
		return nil
	}
	cctx, cancel := cleanupContext(ctx, cleanupResume)
	defer cancel()
	st, err := qemu.Status(cctx, d.mon)
	if err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	if st.Running {
		return nil
	}
	if err := qemu.Cont(cctx, d.mon); err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	d.emit(ctx, Event{Kind: EventGuestResumed})
	return nil
}
