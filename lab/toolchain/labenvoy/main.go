// labenvoy stands in for Envoy on lab VMs, where no Envoy binary can be had.
// pilot-agent runs in its normal mode and execs it as it would Envoy; it
// speaks real xDS to pilot-agent and serves the admin API pilot-agent reads:
//
//   - reads the bootstrap pilot-agent wrote (-c envoy-rev.json);
//   - opens an ADS stream (state of the world) on the xds-grpc cluster, the
//     agent's unix socket, asks for clusters then listeners, ACKs every
//     response, and counts the updates as Envoy's stats do;
//   - fetches the secrets their TLS contexts name over SDS (sds.go), takes
//     every renewed certificate pilot-agent pushes and retries a failed
//     stream with Envoy's backoff; it is LIVE once listeners and secrets
//     are in;
//   - serves admin /stats (usedonly, filter), /stats/prometheus, /ready,
//     /server_info, /drain_listeners and /quitquitquit;
//   - turns each static listener (15021 readiness, 15090 metrics) into a
//     plain HTTP reverse proxy to the cluster it routes to.
//
// `lab-envoy gateway` is the lab's east-west gateway instead (gateway.go).
//
// It has no data plane: nothing listens on 15001/15006, so traffic capture
// blackholes app traffic. The lab says so; it exercises onboarding,
// certificates, autoregistration and health, not Envoy's data path.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// stats are the counters pilot-agent's readiness check reads
// (pilot/cmd/pilot-agent/status/util/stats.go). server.state 2 is
// PRE_INITIALIZING until the first listeners arrive, then 0 (LIVE).
type stats struct {
	mu sync.Mutex
	m  map[string]uint64
}

func newStats() *stats {
	return &stats{m: map[string]uint64{
		"server.state": 2, "listener_manager.workers_started": 0,
		"cluster_manager.cds.update_success": 0, "cluster_manager.cds.update_rejected": 0,
		"listener_manager.lds.update_success": 0, "listener_manager.lds.update_rejected": 0,
	}}
}

func (s *stats) add(k string, d uint64) { s.mu.Lock(); s.m[k] += d; s.mu.Unlock() }
func (s *stats) set(k string, v uint64) { s.mu.Lock(); s.m[k] = v; s.mu.Unlock() }
func (s *stats) live() bool             { s.mu.Lock(); defer s.mu.Unlock(); return s.m["server.state"] == 0 }

func (s *stats) write(w http.ResponseWriter, filter *regexp.Regexp, prometheus bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.m))
	for k := range s.m {
		names = append(names, k)
	}
	sort.Strings(names)
	nonWord := regexp.MustCompile(`\W`)
	for _, k := range names {
		switch {
		case prometheus:
			fmt.Fprintf(w, "envoy_%s %d\n", nonWord.ReplaceAllString(k, "_"), s.m[k])
		case filter == nil || filter.MatchString(k):
			fmt.Fprintf(w, "%s: %d\n", k, s.m[k])
		}
	}
}

// bootstrap is the part of Envoy's bootstrap JSON the stand-in reads.
type bootstrap struct {
	Node  json.RawMessage `json:"node"`
	Admin struct {
		Address address `json:"address"`
	} `json:"admin"`
	StaticResources struct {
		Clusters  []cluster  `json:"clusters"`
		Listeners []listener `json:"listeners"`
	} `json:"static_resources"`
	DynamicResources struct {
		ADSConfig struct {
			GRPCServices []struct {
				EnvoyGRPC struct {
					ClusterName string `json:"cluster_name"`
				} `json:"envoy_grpc"`
			} `json:"grpc_services"`
		} `json:"ads_config"`
	} `json:"dynamic_resources"`
}

type address struct {
	SocketAddress *struct {
		Address   string `json:"address"`
		PortValue int    `json:"port_value"`
	} `json:"socket_address"`
	Pipe *struct {
		Path string `json:"path"`
	} `json:"pipe"`
}

// dial returns the network and address to dial.
func (a address) dial() (network, addr string, err error) {
	switch {
	case a.Pipe != nil:
		return "unix", a.Pipe.Path, nil
	case a.SocketAddress != nil:
		return "tcp", net.JoinHostPort(a.SocketAddress.Address, fmt.Sprint(a.SocketAddress.PortValue)), nil
	}
	return "", "", errors.New("address has neither socket_address nor pipe")
}

type cluster struct {
	Name           string `json:"name"`
	LoadAssignment struct {
		Endpoints []struct {
			LBEndpoints []struct {
				Endpoint struct {
					Address address `json:"address"`
				} `json:"endpoint"`
			} `json:"lb_endpoints"`
		} `json:"endpoints"`
	} `json:"load_assignment"`
}

func (c cluster) address() (address, error) {
	for _, e := range c.LoadAssignment.Endpoints {
		for _, lb := range e.LBEndpoints {
			return lb.Endpoint.Address, nil
		}
	}
	return address{}, fmt.Errorf("cluster %s has no endpoint", c.Name)
}

type listener struct {
	Name    string          `json:"name"`
	Address address         `json:"address"`
	Rest    json.RawMessage `json:"filter_chains"`
}

// routedCluster is the first cluster a listener's routes name.
func (l listener) routedCluster() string {
	m := regexp.MustCompile(`"cluster"\s*:\s*"([^"]+)"`).FindSubmatch(l.Rest)
	if m == nil {
		return ""
	}
	return string(m[1])
}

func main() {
	log.SetPrefix("labenvoy: ")
	if len(os.Args) > 1 && os.Args[1] == "gateway" {
		// The lab's east-west gateway (gateway.go): a daemon of its own.
		if err := runGateway(os.Args[2:]); err != nil {
			log.Fatal(err)
		}
		return
	}
	// Die with pilot-agent, as Envoy would be killed with its parent.
	syscall.Syscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func configPath(args []string) string {
	for i, a := range args {
		if (a == "-c" || a == "--config-path") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func run() error {
	path := configPath(os.Args[1:])
	if path == "" {
		return errors.New("no bootstrap: pilot-agent passes -c <envoy-rev.json>")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var bs bootstrap
	if err := json.Unmarshal(raw, &bs); err != nil {
		return fmt.Errorf("bootstrap %s: %w", path, err)
	}
	node := &core.Node{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(bs.Node, node); err != nil {
		return fmt.Errorf("bootstrap node: %w", err)
	}
	clusters := map[string]cluster{}
	for _, c := range bs.StaticResources.Clusters {
		clusters[c.Name] = c
	}
	st := newStats()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := serveAdmin(bs.Admin.Address, st, stop); err != nil {
		return err
	}
	for _, l := range bs.StaticResources.Listeners {
		if err := serveListener(l, clusters); err != nil {
			log.Printf("listener %s: %v", l.Name, err)
		}
	}
	if len(bs.DynamicResources.ADSConfig.GRPCServices) == 0 {
		return errors.New("bootstrap has no ads_config grpc service")
	}
	xds, ok := clusters[bs.DynamicResources.ADSConfig.GRPCServices[0].EnvoyGRPC.ClusterName]
	if !ok {
		return errors.New("the ADS cluster is not among the static clusters")
	}
	xdsAddr, err := xds.address()
	if err != nil {
		return err
	}
	network, addr, err := xdsAddr.dial()
	if err != nil {
		return err
	}
	w := &warming{st: st}
	secrets := newSDS(ctx, node, clusters, st, w.check)
	w.sds = secrets
	for ctx.Err() == nil {
		err := ads(ctx, network, addr, node, st, secrets, w)
		if ctx.Err() == nil {
			log.Printf("ADS stream ended (%v); reconnecting", err)
			time.Sleep(time.Second)
		}
	}
	return nil
}

// warming makes the server LIVE once listeners have arrived and every secret
// they and the clusters reference has been fetched, as Envoy's listener
// warming waits for SDS; once LIVE it stays so.
type warming struct {
	st  *stats
	sds *sds

	mu        sync.Mutex
	listeners bool
}

func (w *warming) gotListeners() {
	w.mu.Lock()
	w.listeners = true
	w.mu.Unlock()
	w.check()
}

func (w *warming) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.listeners && w.sds.ready() && !w.st.live() {
		w.st.set("server.state", 0)
		w.st.set("listener_manager.workers_started", 1)
		log.Printf("LIVE: listeners in place, secrets %v fetched", w.sds.names())
	}
}

// ads runs one state-of-the-world ADS stream: clusters first, then listeners,
// as Envoy orders them, ACKing every response and subscribing to the secrets
// they reference.
func ads(ctx context.Context, network, addr string, node *core.Node, st *stats, secrets *sds, w *warming) error {
	conn, err := grpcConn(network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		return err
	}
	askedListeners := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if err := stream.Send(ack); err != nil {
			return err
		}
		switch resp.GetTypeUrl() {
		case clusterType, listenerType:
			secrets.update(resp.GetTypeUrl(), resp.GetResources())
		}
		switch resp.GetTypeUrl() {
		case clusterType:
			st.add("cluster_manager.cds.update_success", 1)
			if !askedListeners {
				askedListeners = true
				if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: listenerType}); err != nil {
					return err
				}
			}
		case listenerType:
			st.add("listener_manager.lds.update_success", 1)
			w.gotListeners()
		}
		log.Printf("ACK %s version %s (%d resources)", resp.GetTypeUrl(), resp.GetVersionInfo(), len(resp.GetResources()))
	}
}

// grpcConn is a plaintext gRPC connection to pilot-agent's socket (or
// address), as Envoy's envoy_grpc clusters to it are.
func grpcConn(network, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}))
}

func serveAdmin(a address, st *stats, stop func()) error {
	network, addr, err := a.dial()
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		var filter *regexp.Regexp
		if f := r.URL.Query().Get("filter"); f != "" {
			if filter, err = regexp.Compile(f); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		st.write(w, filter, false)
	})
	mux.HandleFunc("/stats/prometheus", func(w http.ResponseWriter, r *http.Request) { st.write(w, nil, true) })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if !st.live() {
			http.Error(w, "PRE_INITIALIZING", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "LIVE")
	})
	mux.HandleFunc("/server_info", func(w http.ResponseWriter, r *http.Request) {
		state := "PRE_INITIALIZING"
		if st.live() {
			state = "LIVE"
		}
		json.NewEncoder(w).Encode(map[string]string{"state": state, "version": "labenvoy"})
	})
	mux.HandleFunc("/drain_listeners", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "OK") })
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "OK")
		go stop()
	})
	lis, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("admin listen %s: %w", addr, err)
	}
	go http.Serve(lis, mux)
	return nil
}

// serveListener proxies a static listener to the cluster its routes name.
func serveListener(l listener, clusters map[string]cluster) error {
	name := l.routedCluster()
	c, ok := clusters[name]
	if !ok {
		return fmt.Errorf("routes to unknown cluster %q", name)
	}
	target, err := c.address()
	if err != nil {
		return err
	}
	tnet, taddr, err := target.dial()
	if err != nil {
		return err
	}
	network, addr, err := l.Address.dial()
	if err != nil {
		return err
	}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: "upstream"})
	proxy.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, tnet, taddr)
	}}
	lis, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	log.Printf("listener %s on %s -> cluster %s (%s)", l.Name, addr, name, strings.TrimPrefix(taddr, "unix:"))
	go http.Serve(lis, proxy)
	return nil
}
