// Package xlsnapcli is the xlsnap command (see examples/xlsnap): the xl
// snapshot commands snapshot-create, snapshot-list, snapshot-revert and
// snapshot-delete run against a domain's QMP socket.
//
// It is a package so that builds of xlsnap other than the default one can
// add to it without the main module depending on what they add: Run takes
// a Config with more global options and the store that --store opens. The
// default build (examples/xlsnap) runs it with the zero Config, a file
// store; store/etcdstore's cmd/xlsnap-etcd runs it with an etcd store and
// its TLS options:
//
//	var tf etcdstore.TLSFiles
//	os.Exit(xlsnapcli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, xlsnapcli.Config{
//		RegisterFlags: tf.RegisterFlags,
//		OpenStore: func(ctx context.Context, spec string) (store.Store, func() error, error) {
//			return etcdstore.OpenSpec(ctx, spec, tf)
//		},
//	}))
package xlsnapcli
