// Command xlsnap-etcd is xlsnap (see examples/xlsnap in the vmsnap
// module) with its snapshot metadata in etcd: --store takes an etcd URL as
// well as a directory.
//
//	xlsnap-etcd --store etcd://HOST:PORT[,HOST:PORT...]/PREFIX --memory-dir DIR [global options] COMMAND ...
//
// The URL is etcdstore's (see etcdstore.ParseURL): etcds:// or the TLS
// options --etcd-cacert FILE, --etcd-cert FILE and --etcd-key FILE connect
// over TLS. A --store that is not a URL is a file store directory, as for
// xlsnap. External snapshots' memory files are not metadata: with an etcd
// store they go under --memory-dir, which must then be given, and a
// relaunched QEMU's output goes to qemu.log in the domain's directory there.
// Every other option and command is xlsnap's.
//
// It is built from the store/etcdstore module, so that the vmsnap module
// itself never requires etcd's client.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmsnap/vmsnap/examples/xlsnap/xlsnapcli"
	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/etcdstore"
)

const usage = `--store also takes etcd://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...][/PREFIX][?PARAMS] (etcds:// for TLS);
with an etcd store, external snapshots need --memory-dir DIR.
  --etcd-cacert FILE  CA bundle that signed etcd's certificates (implies TLS)
  --etcd-cert FILE    client certificate for etcd (implies TLS)
  --etcd-key FILE     client key for etcd
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var tlsFiles etcdstore.TLSFiles
	code := xlsnapcli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, xlsnapcli.Config{
		RegisterFlags: tlsFiles.RegisterFlags,
		OpenStore: func(ctx context.Context, spec string) (store.Store, func() error, error) {
			return etcdstore.OpenSpec(ctx, spec, tlsFiles)
		},
		Usage: usage,
	})
	stop()
	os.Exit(code)
}
