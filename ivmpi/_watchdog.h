/* A last-resort exit timer, in plain C so that it still runs while the
 * interpreter is shutting down (Python threads are frozen by then).
 *
 * Used at exit when a peer was lost: the MPI library's own finalize may wait
 * forever for the dead process, and the user must get their shell back. */
#ifndef IVMPI_WATCHDOG_H
#define IVMPI_WATCHDOG_H

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
    struct timespec delay;
    int code;
    char message[1024];
} ivmpi_watchdog;

static void *ivmpi_watchdog_main(void *unused)
{
    (void)unused;
    struct timespec left = ivmpi_watchdog.delay;
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    size_t n = strlen(ivmpi_watchdog.message);
    const char *p = ivmpi_watchdog.message;
    while (n > 0) {
        ssize_t w = write(2, p, n);
        if (w <= 0)
            break;
        p += w;
        n -= (size_t)w;
    }
    _exit(ivmpi_watchdog.code);
    return NULL;
}

/* Start the timer once; later calls are ignored.  Returns 0 on success. */
static int ivmpi_start_exit_watchdog(double seconds, int code, const char *message)
{
    static int started = 0;
    if (started)
        return 0;
    if (seconds < 0)
        seconds = 0;
    ivmpi_watchdog.delay.tv_sec = (time_t)seconds;
    ivmpi_watchdog.delay.tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9);
    ivmpi_watchdog.code = code;
    strncpy(ivmpi_watchdog.message, message, sizeof ivmpi_watchdog.message - 1);
    ivmpi_watchdog.message[sizeof ivmpi_watchdog.message - 1] = '\0';
    pthread_attr_t attr;
    pthread_t thread;
    if (pthread_attr_init(&attr) != 0)
        return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, ivmpi_watchdog_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        started = 1;
    return rc;
}

#endif
