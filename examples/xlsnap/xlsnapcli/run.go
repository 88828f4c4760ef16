package xlsnapcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap/store"
)

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

const usageText = `usage: xlsnap [--store DIR] [--uuid UUID] [--launch-cmd CMDLINE | --launch-config FILE] [--agent SOCKET] [--memory-dir DIR] [--timeout D] COMMAND ...
  snapshot-create [-n NAME] [-d DESCRIPTION] [--disk-only] [--external] [--live] [--quiesce] DOMAIN
  snapshot-list [--long | --tree | --json] [--strict] DOMAIN [NAME]
  snapshot-revert -n NAME [--running | --paused] [--force] DOMAIN
  snapshot-delete -n NAME [--children] [--metadata-only] DOMAIN
DOMAIN is the path of the domain's QMP unix socket; --quiesce needs the
guest agent's socket as --agent SOCKET.
`

// globals are the options valid before and after the subcommand.
type globals struct {
	store        string
	uuid         string
	launchCmd    string
	launchConfig string
	agent        string
	memoryDir    string
	timeout      time.Duration
	cfg          Config
	// extra registers the options a build of xlsnap adds (Config.RegisterFlags).
	extra func(fs *flag.FlagSet)
}

// register adds the global options to fs with g's current values as
// defaults, so that a subcommand's flag set keeps what was given before
// the subcommand.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.store, "store", g.store, "metadata root `DIR`")
	fs.StringVar(&g.uuid, "uuid", g.uuid, "the domain's `UUID` (needed when QEMU runs without -uuid)")
	fs.StringVar(&g.launchCmd, "launch-cmd", g.launchCmd, "QEMU `CMDLINE` to restart the domain with (no shell runs it)")
	fs.StringVar(&g.launchConfig, "launch-config", g.launchConfig, "`FILE` with the QEMU command line, one argv word per line")
	fs.StringVar(&g.agent, "agent", g.agent, "the guest agent's unix `SOCKET`, for snapshot-create --quiesce")
	fs.StringVar(&g.memoryDir, "memory-dir", g.memoryDir, "`DIR` for external snapshots' memory files (default: beside the metadata of a file store)")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "how long to wait for the domain's monitor")
	if g.extra != nil {
		g.extra(fs)
	}
}

// usageError is a command line the program cannot run: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// command is one subcommand: it parses its own arguments and runs.
type command func(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error

// Config is what a build of xlsnap adds to the commands: more global
// options and the store that --store opens. The zero Config is the
// default build, with the file store.
type Config struct {
	// RegisterFlags, when not nil, adds global options to fs. It is called
	// for every flag set the global options are parsed with (before the
	// subcommand and again after it), so it must register its flags with
	// their current values as defaults, e.g.
	// fs.StringVar(&v, "name", v, "usage").
	RegisterFlags func(fs *flag.FlagSet)
	// OpenStore opens the metadata store that --store names (store.DefaultRoot
	// when the option is not given) and returns a function that releases
	// it when the command ends. Nil opens a store.FileStore rooted at the
	// directory spec.
	OpenStore func(ctx context.Context, spec string) (s store.Store, closeStore func() error, err error)
	// Usage, when not empty, is appended to the usage message: a line per
	// option that RegisterFlags adds, and what else --store accepts.
	Usage string
}

// openStore opens spec with c.OpenStore, or as a file store.
func (c Config) openStore(ctx context.Context, spec string) (store.Store, func() error, error) {
	if c.OpenStore != nil {
		s, closeStore, err := c.OpenStore(ctx, spec)
		if err != nil {
			return nil, nil, err
		}
		if closeStore == nil {
			closeStore = func() error { return nil }
		}
		return s, closeStore, nil
	}
	fs, err := store.NewFileStore(spec)
	if err != nil {
		return nil, nil, err
	}
	return fs, func() error { return nil }, nil
}

var commands = map[string]command{
	"snapshot-create": cmdCreate,
	"snapshot-list":   cmdList,
	"snapshot-revert": cmdRevert,
	"snapshot-delete": cmdDelete,
}

// Run is the xlsnap program: it parses args (without the program name),
// runs the subcommand with the store and options cfg adds, and returns
// the exit status: 0 for success, 1 for a failed command (one line on
// stderr), 2 for a usage error. When ctx ends during an operation (the
// caller's SIGINT handler), the operation is cancelled and its rollback
// waited for before Run returns.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, cfg Config) int {
	g := globals{store: store.DefaultRoot, timeout: 10 * time.Second, cfg: cfg, extra: cfg.RegisterFlags}
	fs := newFlagSet("xlsnap")
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			err = usagef("%v", err)
		}
		return g.report(stderr, "", err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return g.report(stderr, "", usagef("no command given"))
	}
	cmd, ok := commands[rest[0]]
	if !ok {
		return g.report(stderr, "", usagef("unknown command %q", rest[0]))
	}
	return g.report(stderr, rest[0], cmd(ctx, &g, rest[1:], stdout, stderr))
}

// report prints err as one line and returns the exit status.
func (g *globals) report(stderr io.Writer, cmd string, err error) int {
	if err == nil {
		return exitOK
	}
	prefix := "xlsnap: "
	if cmd != "" {
		prefix += cmd + ": "
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, usageText+g.cfg.Usage)
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "%s%s\n%s%s", prefix, oneLine(err.Error()), usageText, g.cfg.Usage)
		return exitUsage
	}

	fmt.Fprintf(stderr, "%s%s\n", prefix, oneLine(err.Error()))
	return exitFail
}

// oneLine folds a multi-line message (go-multierror's list) into one line.
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var parts []string
	for _, l := range lines {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "* "))
		if l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by report, as one line
	return fs
}

// parseArgs parses flags and positional arguments in any order (flags may
// follow DOMAIN); everything after "--" is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%v", err)
		}
		rest := fs.Args()
		// flag.Parse stops before a positional argument, or right after a
		// "--" it consumed.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, nil
}
