// SPDX-License-Identifier: Apache-2.0
/*
 * connstorm: a TCP connection storm on loopback, to measure what a connect
 * tracer costs at the highest connect rate this machine can sustain.
 *
 *   connstorm [-t THREADS] [-d SECONDS] [-p PORT] [-r RATE] [-x REFUSED_PCT]
 *
 * One listener on 127.0.0.1; THREADS threads each connect, accept what is
 * waiting on the listener and close it, then close their own socket, in a
 * loop for SECONDS. The client closes with SO_LINGER {1, 0}: an RST instead
 * of a FIN, so no socket ever sits in TIME_WAIT and the ephemeral ports never
 * run out, however long the storm. The result is one JSON line on stdout:
 *
 *   {"connects":N,"refused":F,"errors":E,"seconds":S,"rate":R,"threads":T,"port":P,...}
 *
 * -r RATE: at most RATE connect attempts per second in all (0, the default:
 * as fast as the threads go). Each thread paces its share in batches of about
 * a millisecond's worth, sleeping on an absolute clock between batches, so a
 * storm that keeps up offers exactly RATE and costs only the CPU those
 * connects need: a benchmark can ask "does the tracer keep up with RATE"
 * instead of racing the generator against the tracer for the same cores.
 *
 * -x REFUSED_PCT: that share of the attempts (0-100, spread evenly) go to a
 * closed port (one bound, never listening, so nothing else takes it): SYN,
 * RST, ECONNREFUSED. A refused connect is a real connect event for a tracer
 * (SYN_SENT -> CLOSE, result "refused") at a fraction of a full one's cost:
 * no accept, no handshake completion, no close exchange. "refused" counts
 * them; "rate" counts full and refused attempts that ended in the window.
 *
 * Why the clients accept too, instead of a separate accept thread: on 2
 * cores the clients outrun a starved accept thread (their connects complete
 * in softirq without it), the accept queue overflows at somaxconn, the
 * kernel drops SYNs, and each drop parks a client in the 1 s SYN retry
 * timer. A 2-thread storm then loses half its rate for a second by luck,
 * not because of the tracer under test: the rate varied from 36k to 155k
 * connects/s run to run. A thread that accepts after each connect keeps the
 * queue at most THREADS long, so nothing is ever dropped.
 *
 * Why C and not Python: a Python client tops out far below what the kernel
 * can do, and the benchmark must load the tracer, not the load generator.
 * Only 127.0.0.1 is ever used.
 *
 * Build: gcc -O2 -pthread -o connstorm connstorm.c  (bench/tcpconnect.py does it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static atomic_int stop;
static atomic_int started;
static struct sockaddr_in target;
static struct sockaddr_in closed_target; /* bound, never listening: connects are refused */
static int listen_fd;
static double per_thread_rate; /* attempts/s per thread; 0: unpaced */
static int refused_pct;
static double t_start;

struct worker {
	pthread_t thread;
	unsigned long connects;  /* every successful connect */
	unsigned long refused;   /* every connect refused, as asked for by -x */
	unsigned long in_window; /* attempts (ok or refused) that returned before the stop: the rate counts these */
	unsigned long attempts;
	unsigned long errors;
	unsigned long accepted;
	int last_errno;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Close with an RST: no TIME_WAIT. */
static void close_rst(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/*
 * Accept and close whatever waits on the (non-blocking) listener: usually
 * the connect just made, sometimes another thread's. Closing it sends a FIN;
 * the client's RST that follows ends it, so it never reaches TIME_WAIT.
 */
static void serve(struct worker *w)
{
	int fd;

	while ((fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
		w->accepted++;
		close(fd);
	}
}

/*
 * With -r: sleep until this thread may start its next batch. A batch is about
 * a millisecond of its share (at least one attempt); the deadline is absolute
 * (t_start + attempts / rate), so a late wake-up is made up by the next batch
 * rather than lost, and a storm that cannot keep up simply never sleeps.
 */
static void pace(struct worker *w)
{
	unsigned long batch;
	double due, t;

	if (per_thread_rate <= 0)
		return;
	batch = (unsigned long)(per_thread_rate / 1000.0);
	if (batch < 1)
		batch = 1;
	if (w->attempts % batch)
		return;
	due = t_start + w->attempts / per_thread_rate;
	t = now();
	if (t < due) {
		struct timespec ts = { .tv_sec = (time_t)due,
				       .tv_nsec = (long)((due - (time_t)due) * 1e9) };

		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
	}
}

/* Whether attempt n (from 0) of this thread goes to the closed port: spread evenly. */
static int refuse_this(unsigned long n)
{
	return (n + 1) * refused_pct / 100 > n * refused_pct / 100;
}

static void *worker(void *arg)
{
	struct worker *w = arg;

	atomic_fetch_add(&started, 1);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		pace(w);
		if (atomic_load_explicit(&stop, memory_order_relaxed))
			break;
		int refuse = refuse_this(w->attempts);
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		w->attempts++;
		if (fd < 0) {
			w->errors++;
			w->last_errno = errno;
			continue;
		}
		if (refuse) {
			if (connect(fd, (struct sockaddr *)&closed_target, sizeof(closed_target)) != 0 &&
			    errno == ECONNREFUSED) {
				w->refused++;
				w->in_window += !atomic_load_explicit(&stop, memory_order_relaxed);
			} else {
				w->errors++;
				w->last_errno = errno ? errno : EISCONN;
			}
			close(fd);
			continue;
		}
		if (connect(fd, (struct sockaddr *)&target, sizeof(target)) == 0) {
			w->connects++;
			w->in_window += !atomic_load_explicit(&stop, memory_order_relaxed);
		} else {
			w->errors++;
			w->last_errno = errno;
		}
		serve(w);
		close_rst(fd);
	}
	return NULL;
}

static void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [-t THREADS] [-d SECONDS] [-p PORT] [-r RATE] [-x REFUSED_PCT]\n",
		argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	int threads = 2, port = 0, opt, one = 1, closed_fd;
	double seconds = 5.0, rate = 0;
	socklen_t len = sizeof(target);

	while ((opt = getopt(argc, argv, "t:d:p:r:x:")) != -1) {
		switch (opt) {
		case 't': threads = atoi(optarg); break;
		case 'd': seconds = atof(optarg); break;
		case 'p': port = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 'x': refused_pct = atoi(optarg); break;
		default: usage(argv[0]);
		}
	}
	if (threads < 1 || seconds <= 0 || port < 0 || port > 65535 || !(rate >= 0 && rate < 1e9) ||
	    refused_pct < 0 || refused_pct > 100)
		usage(argv[0]);
	per_thread_rate = rate / threads;

	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (listen_fd < 0) {
		perror("connstorm: socket");
		return 1;
	}
	setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&target, 0, sizeof(target));
	target.sin_family = AF_INET;
	target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	target.sin_port = htons(port);
	if (bind(listen_fd, (struct sockaddr *)&target, sizeof(target)) ||
	    listen(listen_fd, 4096) ||
	    getsockname(listen_fd, (struct sockaddr *)&target, &len)) {
		perror("connstorm: listen on 127.0.0.1");
		return 1;
	}

	/* The closed port: bound so that nothing else takes it, never listening. */
	closed_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memset(&closed_target, 0, sizeof(closed_target));
	closed_target.sin_family = AF_INET;
	closed_target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	len = sizeof(closed_target);
	if (closed_fd < 0 || bind(closed_fd, (struct sockaddr *)&closed_target, len) ||
	    getsockname(closed_fd, (struct sockaddr *)&closed_target, &len)) {
		perror("connstorm: bind the closed port on 127.0.0.1");
		return 1;
	}

	struct worker *ws = calloc(threads, sizeof(*ws));

	if (!ws) {
		perror("connstorm: calloc");
		return 1;
	}
	double t0 = now();

	t_start = t0;
	for (int i = 0; i < threads; i++)
		pthread_create(&ws[i].thread, NULL, worker, &ws[i]);
	while (atomic_load(&started) < threads)
		usleep(100);

	struct timespec nap = { .tv_sec = (time_t)seconds,
				.tv_nsec = (long)((seconds - (time_t)seconds) * 1e9) };
	while (nanosleep(&nap, &nap) && errno == EINTR)
		;
	atomic_store(&stop, 1);
	/* The window ends here: a connect still in flight must not stretch it. */
	double elapsed = now() - t0;

	unsigned long connects = 0, refused = 0, in_window = 0, errors = 0, accepted = 0;
	int last_errno = 0;

	for (int i = 0; i < threads; i++) {
		pthread_join(ws[i].thread, NULL);
		connects += ws[i].connects;
		refused += ws[i].refused;
		in_window += ws[i].in_window;
		errors += ws[i].errors;
		accepted += ws[i].accepted;
		if (ws[i].last_errno)
			last_errno = ws[i].last_errno;
	}
	close(listen_fd);
	close(closed_fd);

	printf("{\"connects\":%lu,\"refused\":%lu,\"errors\":%lu,\"last_error\":\"%s\","
	       "\"accepted\":%lu,\"seconds\":%.3f,\"rate\":%.1f,\"offered\":%.1f,"
	       "\"threads\":%d,\"port\":%d,\"closed_port\":%d}\n",
	       connects, refused, errors, last_errno ? strerror(last_errno) : "", accepted,
	       elapsed, in_window / elapsed, rate, threads, ntohs(target.sin_port),
	       ntohs(closed_target.sin_port));
	free(ws);
	return 0;
}
