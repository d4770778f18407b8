package main

// The east-west gateway's part that VMs use: Istio's expose-istiod
// VirtualServices pass TLS on 15012 through to istiod by SNI (a
// revision's route matches istiod-<rev>.istio-system.svc, the default
// revision's "*"), so one gateway address serves every revision. The lab
// has no gateway pod; `lab-envoy gateway` does that passthrough, with the
// routes given on its command line.

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"
)

// gatewayRoutes are SNI -> upstream address; "*" takes any other name.
type gatewayRoutes map[string]string

func (r gatewayRoutes) upstream(sni string) (string, bool) {
	if a, ok := r[sni]; ok {
		return a, true
	}
	a, ok := r["*"]
	return a, ok
}

// runGateway listens on addr and passes every TLS connection through to
// the upstream its SNI names.
func runGateway(args []string) error {
	var listen string
	routes := gatewayRoutes{}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--listen" && i+1 < len(args):
			i++
			listen = args[i]
		case a == "--route" && i+1 < len(args):
			i++
			sni, up, ok := strings.Cut(args[i], "=")
			if !ok || sni == "" || up == "" {
				return fmt.Errorf("--route %q: want SNI=host:port (SNI * for any other name)", args[i])
			}
			routes[sni] = up
		default:
			return fmt.Errorf("gateway: unknown argument %q: want --listen host:port and --route SNI=host:port ...", a)
		}
	}
	if listen == "" || len(routes) == 0 {
		return errors.New("gateway: want --listen host:port and at least one --route SNI=host:port")
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	log.Printf("gateway on %s: routes %v", listen, routes)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go passthrough(c, routes)
	}
}

func passthrough(c net.Conn, routes gatewayRoutes) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	sni, hello, err := peekSNI(c)
	if err != nil {
		log.Printf("%s: no TLS ClientHello: %v", c.RemoteAddr(), err)
		return
	}
	c.SetReadDeadline(time.Time{})
	addr, ok := routes.upstream(sni)
	if !ok {
		// Envoy resets a connection no filter chain matches.
		log.Printf("%s: no route for SNI %q", c.RemoteAddr(), sni)
		return
	}
	up, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		log.Printf("%s: SNI %q: upstream %s: %v", c.RemoteAddr(), sni, addr, err)
		return
	}
	defer up.Close()
	if _, err := up.Write(hello); err != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	wg.Wait()
}

// peekSNI reads the ClientHello and returns its server name with the bytes
// read, to be replayed to the upstream (which does the handshake).
func peekSNI(c net.Conn) (string, []byte, error) {
	var rec bytes.Buffer
	var sni string
	seen := errors.New("hello read")
	err := tls.Server(recordingConn{Conn: c, r: io.TeeReader(c, &rec)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = h.ServerName
			return nil, seen
		},
	}).Handshake()
	if !errors.Is(err, seen) {
		return "", nil, err
	}
	return sni, rec.Bytes(), nil
}

// recordingConn reads through r and writes nothing: the handshake it is
// given must not answer the client.
type recordingConn struct {
	net.Conn
	r io.Reader
}

func (c recordingConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c recordingConn) Write(p []byte) (int, error) { return len(p), nil }
