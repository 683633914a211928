import pytest

from forwarding.protocol.linebuffer import LineBuffer, LineTooLong


def test_lines_come_out_in_order_without_terminators():
    buf = LineBuffer(100)
    buf.feed(b"one\ntwo\nthr")
    assert buf.next_line() == b"one"
    assert buf.next_line() == b"two"
    assert buf.next_line() is None
    buf.feed(b"ee\n")
    assert buf.next_line() == b"three"
    assert buf.next_line() is None


def test_take_rest_returns_what_follows_the_last_line():
    buf = LineBuffer(100)
    buf.feed(b"line\nraw \x00 bytes")
    assert buf.next_line() == b"line"
    assert buf.take_rest() == b"raw \x00 bytes"
    assert len(buf) == 0


def test_unterminated_line_over_the_limit_is_refused_before_its_newline():
    buf = LineBuffer(8)
    buf.feed(b"123456789")
    with pytest.raises(LineTooLong, match="exceeds 8 bytes"):
        buf.next_line()


def test_terminated_line_over_the_limit_is_refused():
    buf = LineBuffer(8)
    buf.feed(b"123456789\n")
    with pytest.raises(LineTooLong):
        buf.next_line()


def test_line_of_exactly_the_limit_is_accepted():
    buf = LineBuffer(8)
    buf.feed(b"12345678\n")
    assert buf.next_line() == b"12345678"


def test_byte_at_a_time_feed_resumes_the_search_where_it_stopped():
    buf = LineBuffer(1 << 20)
    for b in b"x" * 1000:
        buf.feed(bytes([b]))
        assert buf.next_line() is None
        assert buf._scanned == len(buf)  # never rescans what it has seen
    buf.feed(b"\n")
    assert buf.next_line() == b"x" * 1000


def test_a_run_of_blank_lines_is_skipped_in_one_step_and_counts_toward_the_total():
    from forwarding.protocol.linebuffer import TooMuchInput

    buf = LineBuffer(100, max_total=1000)
    buf.feed(b"\n\r\n \t\n" * 100 + b'{"req":"hs1"}\n')
    buf.skip_blank()
    assert buf.next_line() == b'{"req":"hs1"}'
    buf.feed(b"\n" * 400)
    with pytest.raises(TooMuchInput, match="exceeds 1000 bytes"):
        buf.skip_blank()
