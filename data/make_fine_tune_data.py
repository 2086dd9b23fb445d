"""
Writes data/fine_tune_data.csv: rated answers to Python questions, for fine-tuning a model
pretrained on the standard library's source (the default corpus of pretrain.py).

Every prompt is one hand-written task from the tables below. Each task knows a good answer and a
subtly wrong one; the other answers are made from those by the transforms in answers_for():

    5  good: a def with a docstring, or a one-line explanation followed by code
    4  correct but bare: the code alone (no docstring, no explanation), or just the value
    3  vague: the idea in words without the code (a hint, or the reason without the value), or code alone
       where an explanation was asked for
    2  wrong code or a wrong fact (hand-written), or the good answer cut off mid-way
    1  rude or off-topic, from hand-written lists, each line used about once

Each prompt gets 2 to 4 of these with different ratings, drawn with a fixed seed, so the file is
the same on every run. The script checks itself: every 'what does X return' fact is evaluated,
and every good function passes its test while its wrong twin fails it.

    python data/make_fine_tune_data.py
"""
import csv
import os
import random

# -----------------------------------------------------------------------------
# 'write a function' tasks: (prompt, signature, docstring, hint, good body, wrong body, test)
# bodies are indented by 4 spaces after their first line; test is an expression run on the def
DEFS = [
    ("Write a function that reverses a string.", "reverse(s)", "Return the string s reversed.",
     "Slice it with a step of -1.", "return s[::-1]", "return s[::1]", "reverse('abc') == 'cba'"),
    ("Write a function to check if a string is a palindrome.", "is_palindrome(s)",
     "Return True if s reads the same backwards.", "Compare the string with its reverse.",
     "return s == s[::-1]", "return s[0] == s[-1]", "is_palindrome('aba') and not is_palindrome('abca')"),
    ("Write a function that counts the vowels in a string.", "count_vowels(s)",
     "Return the number of vowels in s.", "Lower-case it and count the characters in 'aeiou'.",
     "return sum(c in 'aeiou' for c in s.lower())", "return sum(c in 'aeiou' for c in s)",
     "count_vowels('Apple') == 2"),
    ("Write a function that computes the factorial of n.", "factorial(n)", "Return n! for n >= 0.",
     "Multiply n by the factorial of n - 1, stopping at 1.", "return 1 if n < 2 else n * factorial(n - 1)",
     "return n * factorial(n - 1)", "factorial(5) == 120"),
    ("Write a function that returns the n-th Fibonacci number.", "fib(n)", "Return the n-th Fibonacci number.",
     "Keep the last two numbers and add them, n times.",
     "a, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nreturn a",
     "a, b = 0, 1\nfor _ in range(n):\n    a = b\n    b = a + b\nreturn a", "fib(10) == 55"),
    ("I need a function that returns the largest item of a list.", "largest(items)",
     "Return the largest item of a non-empty list.", "The built-in max() already does it.",
     "return max(items)", "return sorted(items)[0]", "largest([3, 9, 2]) == 9"),
    ("Write a function for the sum of the squares from 1 to n.", "sum_squares(n)",
     "Return 1**2 + 2**2 + ... + n**2.", "Add up i * i for i from 1 to n.",
     "return sum(i * i for i in range(1, n + 1))", "return sum(i * i for i in range(n))",
     "sum_squares(3) == 14"),
    ("Write a function that tells whether a number is even.", "is_even(n)", "Return True if n is even.",
     "Check whether n % 2 is 0.", "return n % 2 == 0", "return n % 2 == 1", "is_even(4)"),
    ("How would I write a function to flatten a list of lists?", "flatten(lists)",
     "Return one list with the items of every inner list.", "Use a comprehension with two for clauses.",
     "return [x for inner in lists for x in inner]", "return [inner for inner in lists]",
     "flatten([[1, 2], [3]]) == [1, 2, 3]"),
    ("Write a function that removes duplicates from a list but keeps the order.", "unique(items)",
     "Return items without duplicates, in their first order.",
     "dict.fromkeys keeps the first of each item, in order.", "return list(dict.fromkeys(items))",
     "return list(set(items))", "unique([3, 1, 3, 2]) == [3, 1, 2]"),
    ("Write a function that counts the words in a text.", "word_count(text)",
     "Return the number of words in text.", "Split on whitespace and count the parts.",
     "return len(text.split())", "return len(text.split(' '))", "word_count('a  b ') == 2"),
    ("Write a function to convert Celsius to Fahrenheit.", "to_fahrenheit(c)",
     "Convert degrees Celsius to Fahrenheit.", "Multiply by 9/5, then add 32.", "return c * 9 / 5 + 32",
     "return (c + 32) * 9 / 5", "to_fahrenheit(100) == 212"),
    ("Write a function that returns the average of a list of numbers.", "mean(xs)",
     "Return the arithmetic mean of a non-empty list.", "Divide the sum by the length.",
     "return sum(xs) / len(xs)", "return sum(xs) // len(xs)", "mean([1, 2]) == 1.5"),
    ("Write a function that capitalizes every word in a sentence.", "title_words(s)",
     "Return s with every word capitalized.", "Capitalize each word, then join them with spaces.",
     "return ' '.join(w.capitalize() for w in s.split())", "return s.capitalize()",
     "title_words('hello big world') == 'Hello Big World'"),
    ("Write a function that merges two dictionaries.", "merge(a, b)",
     "Return a new dict with the items of a and b; b wins.", "Unpack both into a new dict, b last.",
     "return {**a, **b}", "return {**b, **a}", "merge({'x': 1}, {'x': 2}) == {'x': 2}"),
    ("Write a function that swaps the keys and values of a dict.", "invert(d)",
     "Return a dict mapping each value of d to its key.",
     "Use a dict comprehension with the value as the key.", "return {v: k for k, v in d.items()}",
     "return {v: k for v, k in d.items()}", "invert({'a': 1}) == {1: 'a'}"),
    ("Write a function that splits a list into chunks of size n.", "chunks(xs, n)",
     "Return xs cut into lists of length n.", "Slice the list in steps of n.",
     "return [xs[i:i + n] for i in range(0, len(xs), n)]",
     "return [xs[i:i + n] for i in range(0, len(xs) - n, n)]", "chunks([1, 2, 3], 2) == [[1, 2], [3]]"),
    ("Write a function that reads a whole text file.", "read_text(path)",
     "Return the contents of a text file.", "Open it in a with block and call read().",
     "with open(path, encoding='utf-8') as f:\n    return f.read()", "f = open(path)\nreturn f.readline()",
     None),
    ("Write a function that counts the lines in a file.", "count_lines(path)",
     "Return the number of lines in a file.", "Iterate over the file and count the lines.",
     "with open(path) as f:\n    return sum(1 for _ in f)",
     "with open(path) as f:\n    return len(f.read().split())", None),
    ("Write a function for the greatest common divisor.", "gcd(a, b)",
     "Return the greatest common divisor of a and b.", "Use Euclid's algorithm with %.",
     "while b:\n    a, b = b, a % b\nreturn a", "while b:\n    a, b = b, a // b\nreturn a", "gcd(12, 18) == 6"),
    ("Write a function that checks if a number is prime.", "is_prime(n)",
     "Return True if n is a prime number.", "Try the divisors up to the square root of n.",
     "return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
     "return all(n % d for d in range(2, n // 2))", "is_prime(7) and not is_prime(4) and not is_prime(1)"),
    ("Write a function that clamps a number to a range.", "clamp(x, lo, hi)",
     "Return x limited to the range lo to hi.", "Take min with hi, then max with lo.",
     "return max(lo, min(x, hi))", "return min(lo, max(x, hi))", "clamp(5, 0, 3) == 3"),
    ("Write a function that adds up the digits of a number.", "digit_sum(n)",
     "Return the sum of the decimal digits of n >= 0.", "Turn it into a string and add up the digits.",
     "return sum(int(d) for d in str(n))", "return n % 10 + n // 10", "digit_sum(123) == 6"),
    ("Write a function that returns the last n items of a list.", "last(xs, n)",
     "Return the last n items of xs, for n > 0.", "Slice from -n to the end.", "return xs[-n:]",
     "return xs[:-n]", "last([1, 2, 3], 2) == [2, 3]"),
    ("Write a function that squares every number in a list.", "squares(xs)",
     "Return a list of the squares of xs.", "A list comprehension with x * x.", "return [x * x for x in xs]",
     "return [x * 2 for x in xs]", "squares([3]) == [9]"),
    ("Write a function that keeps only the even numbers of a list.", "evens(xs)",
     "Return the even numbers of xs.", "Keep x when x % 2 == 0.", "return [x for x in xs if x % 2 == 0]",
     "return [x for x in xs if x % 2]", "evens([1, 2, 3, 4]) == [2, 4]"),
    ("Write a function that counts how often each item occurs.", "counts(items)",
     "Return a dict counting each item.", "Loop and add 1 to counts.get(x, 0).",
     "counts = {}\nfor x in items:\n    counts[x] = counts.get(x, 0) + 1\nreturn counts",
     "counts = {}\nfor x in items:\n    counts[x] = 1\nreturn counts", "counts('aab') == {'a': 2, 'b': 1}"),
    ("Write a function that joins words with commas.", "join_commas(words)",
     "Return the words joined by a comma and a space.", "Call join on the string ', '.",
     "return ', '.join(words)", "return ','.join(words)", "join_commas(['a', 'b']) == 'a, b'"),
    ("Write a function that checks for a leap year.", "is_leap(year)", "Return True if year is a leap year.",
     "Divisible by 4, but not by 100 unless also by 400.",
     "return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)", "return year % 4 == 0",
     "is_leap(2000) and not is_leap(1900)"),
    ("Write a function that returns the smallest and largest item.", "min_max(xs)",
     "Return the smallest and largest item as a tuple.", "Return min() and max() together.",
     "return min(xs), max(xs)", "return xs[0], xs[-1]", "min_max([3, 1, 2]) == (1, 3)"),
    ("Write a function that collapses repeated spaces.", "squeeze(s)",
     "Return s with each run of whitespace made one space.", "split() it, then join with one space.",
     "return ' '.join(s.split())", "return s.replace('  ', ' ')", "squeeze('a   b') == 'a b'"),
    ("Write a function for the dot product of two lists.", "dot(a, b)",
     "Return the dot product of two equal-length lists.", "Sum the products of the pairs from zip(a, b).",
     "return sum(x * y for x, y in zip(a, b))", "return sum(a) * sum(b)", "dot([1, 2], [3, 4]) == 11"),
    ("Write a function that transposes a matrix.", "transpose(m)", "Return the transpose of a list of rows.",
     "zip(*m) gives the columns.", "return [list(row) for row in zip(*m)]",
     "return [list(row) for row in zip(m)]", "transpose([[1, 2], [3, 4]]) == [[1, 3], [2, 4]]"),
    ("Write a function that converts a number to binary.", "to_binary(n)",
     "Return n >= 0 in base 2, without a prefix.", "format() with the 'b' spec gives the digits.",
     "return format(n, 'b')", "return bin(n)", "to_binary(5) == '101'"),
    ("Write a function that parses an int with a default.", "to_int(s, default=0)",
     "Return int(s), or default if s is not a number.", "Catch ValueError around int(s).",
     "try:\n    return int(s)\nexcept ValueError:\n    return default",
     "try:\n    return int(s)\nexcept TypeError:\n    return default", "to_int('x') == 0"),
    ("Write a function that sorts words by length.", "by_length(words)",
     "Return the words from shortest to longest.", "Use sorted() with key=len.",
     "return sorted(words, key=len)", "return words.sort(key=len)", "by_length(['ccc', 'a']) == ['a', 'ccc']"),
    ("Write a function that sorts the keys of a dict by value.", "sort_by_value(d)",
     "Return the keys of d ordered by their values.", "Sort the keys with key=d.get.",
     "return sorted(d, key=d.get)", "return sorted(d)", "sort_by_value({'a': 2, 'b': 1}) == ['b', 'a']"),
    ("Write a function that finds the first non-repeated character.", "first_unique(s)",
     "Return the first character that occurs once in s, or None.",
     "Find the first character whose count is 1.", "return next((c for c in s if s.count(c) == 1), None)",
     "return next((c for c in s if s.count(c) > 1), None)", "first_unique('aabc') == 'b'"),
    ("Write a function that checks if two words are anagrams.", "is_anagram(a, b)",
     "Return True if a and b have the same letters.", "Compare the sorted letters.",
     "return sorted(a) == sorted(b)", "return set(a) == set(b)",
     "is_anagram('ab', 'ba') and not is_anagram('aab', 'abb')"),
    ("Write a function that returns the running totals of a list.", "running_total(xs)",
     "Return the cumulative sums of xs.", "Add each item to a total and keep every total.",
     "total, out = 0, []\nfor x in xs:\n    total += x\n    out.append(total)\nreturn out",
     "total, out = 0, []\nfor x in xs:\n    out.append(total)\n    total += x\nreturn out",
     "running_total([1, 2, 3]) == [1, 3, 6]"),
    ("Write a function that counts a character in a string.", "count_char(s, c)",
     "Return how many times c occurs in s.", "str.count does exactly that.", "return s.count(c)",
     "return s.find(c)", "count_char('banana', 'a') == 3"),
    ("Write a function mapping each word to its length.", "word_lengths(text)",
     "Return a dict from each word of text to its length.", "Use a dict comprehension over text.split().",
     "return {w: len(w) for w in text.split()}", "return {w: len(text) for w in text.split()}",
     "word_lengths('hi you') == {'hi': 2, 'you': 3}"),
    ("Write a function that builds a dict from two lists.", "to_dict(keys, values)",
     "Return a dict pairing keys with values by position.", "Zip the two lists and pass them to dict().",
     "return dict(zip(keys, values))", "return dict(zip(values, keys))", "to_dict(['a'], [1]) == {'a': 1}"),
    ("Write a function that parses comma-separated integers.", "parse_ints(s)",
     "Return the integers in a comma-separated string.", "Split on commas and call int on each part.",
     "return [int(x) for x in s.split(',')]", "return [int(x) for x in s]", "parse_ints('1,22') == [1, 22]"),
    ("Write a function that rotates a list to the left.", "rotate(xs, k)",
     "Return xs rotated left by k places.", "Join the slices xs[k:] and xs[:k].", "return xs[k:] + xs[:k]",
     "return xs[:k] + xs[k:]", "rotate([1, 2, 3], 1) == [2, 3, 1]"),
    ("Write a function that checks if a list is sorted.", "is_sorted(xs)",
     "Return True if xs is in ascending order.", "Check that each item is <= the next one.",
     "return all(a <= b for a, b in zip(xs, xs[1:]))", "return xs == sorted(xs, reverse=True)",
     "is_sorted([1, 2, 2]) and not is_sorted([2, 1])"),
    ("Write a function that divides safely by zero.", "safe_div(a, b)",
     "Return a / b, or None when b is zero.", "Check for b == 0 before dividing.",
     "return None if b == 0 else a / b", "return a / b if b else 0",
     "safe_div(1, 0) is None and safe_div(1, 2) == 0.5"),
    ("Write a function that removes the vowels from a string.", "strip_vowels(s)",
     "Return s without its vowels.", "Keep only the characters that are not vowels.",
     "return ''.join(c for c in s if c.lower() not in 'aeiou')", "return s.strip('aeiou')",
     "strip_vowels('bAnana') == 'bnn'"),
]

# 'how do I' tasks: (prompt, hint, code, wrong answer)
HOWS = [
    ("How do I read a file line by line?", "Iterate over the open file",
     "with open(path) as f:\n    for line in f:\n        print(line, end='')",
     "Loop over f.read():\nfor line in open(path).read():\n    print(line)"),
    ("How do I get the current date and time?", "Use datetime.now()",
     "from datetime import datetime\nnow = datetime.now()",
     "Use time.time(); it returns a datetime object."),
    ("How do I sort a list in reverse order?", "Pass reverse=True to sorted()",
     "sorted(xs, reverse=True)", "Call sorted(xs).reverse(); it returns the list backwards."),
    ("How can I check if a key is in a dictionary?", "Use the in operator", "if key in d:\n    ...",
     "Use d.has_key(key), it works in Python 3."),
    ("How do I convert a string to an integer?", "Call int() on it", "n = int('42')",
     "Use str(s); it turns '42' into 42."),
    ("How do I make a copy of a list?", "Call its copy() method or slice it", "b = a.copy()",
     "Just assign it; b = a makes a new list."),
    ("How do I get the length of a string?", "Use the built-in len()", "n = len(s)",
     "Use s.length, like in JavaScript."),
    ("How do I remove an item from a list by index?", "Use del or pop()",
     "del xs[i]  # or xs.pop(i)", "Use xs.remove(i); it removes the item at index i."),
    ("How can I loop over a list with the index?", "Use enumerate()",
     "for i, x in enumerate(xs):\n    print(i, x)", "Unpack it directly:\nfor i, x in xs:\n    print(i, x)"),
    ("How do I loop over two lists at once?", "Use zip()", "for a, b in zip(xs, ys):\n    print(a, b)",
     "Put them in the for:\nfor a, b in xs, ys:\n    print(a, b)"),
    ("How do I join a list of strings with spaces?", "Call join() on the separator",
     "' '.join(words)", "Lists have a join method: words.join(' ')"),
    ("How do I split a string on commas?", "Pass the separator to split()", "parts = s.split(',')",
     "split() splits on commas by default:\nparts = s.split()"),
    ("How do I check the type of a variable?", "Use isinstance()", "isinstance(x, int)",
     "Every object has a type field: x.type == int"),
    ("How do I write text to a file?", "Open it in write mode",
     "with open(path, 'w') as f:\n    f.write(text)", "Open it and write:\nwith open(path) as f:\n    f.write(text)"),
    ("How do I get a random number from 1 to 6?", "Use random.randint(); it includes both ends",
     "import random\nroll = random.randint(1, 6)",
     "The end is excluded, so:\nimport random\nroll = random.randint(1, 7)"),
    ("How do I format a float with two decimals?", "Use an f-string format spec", "f'{x:.2f}'",
     "Use a width of 2: f'{x:2f}'"),
    ("How do I get the keys of a dict as a list?", "Pass the dict to list()", "keys = list(d)",
     "Use the values: keys = list(d.values())"),
    ("How do I reverse a list in place?", "Call its reverse() method", "xs.reverse()",
     "Assign the result: xs = xs.reverse()"),
    ("How do I check if a string starts with a prefix?", "Use startswith()", "s.startswith('http')",
     "Use find: s.find('http') > 0"),
    ("How do I pause a program for one second?", "Use time.sleep(), which takes seconds",
     "import time\ntime.sleep(1)", "time.sleep() takes milliseconds:\nimport time\ntime.sleep(1000)"),
    ("How do I get the command line arguments?", "Read sys.argv; item 0 is the script",
     "import sys\nargs = sys.argv[1:]", "sys.argv holds only the arguments:\nimport sys\nargs = sys.argv"),
    ("How do I list the files in a directory?", "Use os.listdir()", "import os\nnames = os.listdir('.')",
     "os.walk returns a list of names:\nimport os\nnames = os.walk('.')"),
    ("How do I find the index of an item in a list?", "Use index(); it raises ValueError if missing",
     "i = xs.index(x)", "Lists have find, which gives -1 if missing: i = xs.find(x)"),
    ("How do I convert a list to a set?", "Pass it to set()", "s = set(xs)", "Wrap it in braces: s = {xs}"),
    ("How do I parse JSON text?", "Use json.loads()", "import json\ndata = json.loads(text)",
     "json.load is for strings:\nimport json\ndata = json.load(text)"),
    ("How do I round a number to the nearest integer?", "Use round(); halves go to the even side",
     "round(2.5)  # 2", "int() rounds: int(2.5) gives 3"),
    ("How do I count how often each word appears?", "Use collections.Counter",
     "from collections import Counter\ncounts = Counter(text.split())",
     "dict() counts them: counts = dict(text.split())"),
    ("How do I make a string lowercase?", "Call its lower() method", "s.lower()",
     "There is a built-in: lower(s)"),
    ("How do I stop a script early?", "Call sys.exit()", "import sys\nsys.exit('done')",
     "Return from the top level of the script: return 0"),
    ("How do I check if a list is empty?", "Test its truth value", "if not xs:\n    print('empty')",
     "Compare with None:\nif xs == None:\n    print('empty')"),
    ("How do I get the last item of a list?", "Index it with -1", "x = xs[-1]",
     "Index it with its length: x = xs[len(xs)]"),
    ("How can I swap two variables?", "Use tuple assignment", "a, b = b, a",
     "Assign them in turn:\na = b\nb = a"),
]

# 'what does X return' facts: (expression, repr of its value, reason, wrong value, wrong reason)
WHATS = [
    ("len([])", "an empty list has no items", "None", "an empty list has no length"),
    ("bool('')", "an empty string is false", "True", "every string object is true"),
    ("'a,b,,c'.split(',')", "empty fields are kept", "['a', 'b', 'c']", "split drops empty fields"),
    ("7 // 2", "// is floor division", "3.5", "// is true division"),
    ("7 / 2", "/ always gives a float", "3", "/ between ints truncates"),
    ("-7 // 2", "floor division rounds towards minus infinity", "-3", "it rounds towards zero"),
    ("2 ** 10", "** is exponentiation", "20", "** multiplies"),
    ("'abc'[1]", "indexing starts at 0", "'a'", "indexing starts at 1"),
    ("'abc'[-1]", "negative indexes count from the end", "'a'", "-1 wraps around to the start"),
    ("[1, 2, 3][1:]", "the slice starts at index 1", "[1]", "the slice takes one item"),
    ("list(range(3))", "range stops before its end", "[1, 2, 3]", "range starts at 1"),
    ("'hello'.upper()", "upper returns a new string", "None", "upper changes the string in place"),
    ("sorted([3, 1, 2])", "sorted returns a new sorted list", "None", "sorted works in place"),
    ("[3, 1, 2].sort()", "sort works in place", "[1, 2, 3]", "sort returns the sorted list"),
    ("0.1 + 0.2 == 0.3", "binary floats cannot hold 0.1 exactly", "True", "the sum is exactly 0.3"),
    ("'3' + '4'", "+ joins strings", "7", "+ adds the numbers in the strings"),
    ("'ab' * 3", "* repeats a string", "'ab3'", "* appends the number"),
    ("max('apple', 'pear')", "strings compare alphabetically", "'apple'", "the longer string wins"),
    ("round(2.5)", "ties round to the even number", "3", "halves always round up"),
    ("int('12') + 1", "int turns the text into a number", "'121'", "+ joins the two"),
    ("type(3.0)", "3.0 is a float literal", "<class 'int'>", "3.0 is a whole number"),
    ("None == False", "None only equals None", "True", "None and False are the same"),
    ("[] is []", "each [] makes a new list", "True", "empty lists are shared"),
    ("'Python'.find('z')", "find gives -1 when it is missing", "None", "find returns None if missing"),
    ("{'a': 1}.get('b')", "get gives None for a missing key", "0", "missing keys default to 0"),
    ("len('héllo')", "len counts characters, not bytes", "6", "é takes two bytes"),
    ("abs(-3)", "abs drops the sign", "-3", "abs keeps negative numbers"),
    ("divmod(7, 3)", "it is the quotient and the remainder", "(1, 2)", "it is the remainder first"),
    ("'a b c'.split()", "split() splits on whitespace", "['a b c']", "split() needs a separator"),
    ("any([])", "no item is true", "True", "an empty list counts as all true"),
    ("all([])", "there is no false item", "False", "an empty list has nothing true"),
    ("list('abc')", "a string is a sequence of characters", "['abc']", "the string becomes one item"),
    ("bool([0])", "the list is not empty", "False", "it holds only 0"),
    ("'  hi '.strip()", "strip removes spaces at both ends", "'hi '", "strip only trims the left"),
    ("10 % 3", "% gives the remainder", "3", "% gives the quotient"),
    ("'abc' < 'abd'", "strings compare letter by letter", "False", "strings compare by length"),
    ("tuple([1, 2])", "tuple copies the items into a tuple", "[1, 2]", "tuple leaves lists alone"),
    ("sum([0.5, 0.5])", "adding floats gives a float", "1", "sum always returns an int"),
    ("len({1, 1, 2})", "a set drops duplicates", "3", "a set keeps every item"),
    ("'x'.join('abc')", "join puts x between the characters", "'abcx'", "join appends x"),
]

# 'explain' prompts: (prompt, explanation, example code, wrong explanation)
EXPLAINS = [
    ("What is a list comprehension?", "A short way to build a list with a loop",
     "squares = [x * x for x in range(5)]", "It is a kind of comment that Python skips."),
    ("What is the difference between a list and a tuple?", "Lists can change, tuples cannot",
     "point = (1, 2)\nitems = [1, 2]", "Tuples can grow, but lists are fixed once made."),
    ("What does the with statement do?", "It always runs the cleanup, even on errors",
     "with open(path) as f:\n    data = f.read()", "It runs the block in a separate thread."),
    ("What is a generator?", "A function that yields values lazily, one at a time",
     "def count(n):\n    for i in range(n):\n        yield i",
     "A function that returns a list of every value at once."),
    ("What does if __name__ == '__main__' mean?", "The block runs only when the file is run, not imported",
     "if __name__ == '__main__':\n    main()", "It checks that the file is named main.py."),
    ("What is a lambda?", "A small function without a name, one expression",
     "square = lambda x: x * x", "A lambda is a loop that runs in the background."),
    ("Explain *args and **kwargs.", "They collect extra arguments in a tuple and a dict",
     "def f(*args, **kwargs):\n    print(args, kwargs)", "They are pointers and pointers to pointers, as in C."),
    ("What is a decorator?", "A function that takes a function and returns a wrapped one",
     "@functools.cache\ndef fib(n):\n    ...", "It changes how a function looks in the editor."),
    ("What is self in a method?", "It is the instance the method was called on",
     "def area(self):\n    return self.w * self.h", "self is a keyword for the class itself."),
    ("What is the difference between == and is?", "== compares values, is compares identity",
     "[1] == [1]  # True\n[1] is [1]  # False", "They are the same; is is easier to read."),
    ("What does try/except do?", "It runs code and handles the exceptions you name",
     "try:\n    n = int(s)\nexcept ValueError:\n    n = 0", "It runs the code twice and ignores the second error."),
    ("What is a dictionary?", "A mapping from keys to values with fast lookup",
     "ages = {'ann': 31}\nages['ann']", "A dictionary is a sorted list of words."),
    ("What is slicing?", "Taking part of a sequence with start:stop:step",
     "'python'[1:4]  # 'yth'", "Slicing deletes items from a list."),
    ("What does pass do?", "Nothing; it fills a block that cannot be empty",
     "class Empty:\n    pass", "pass skips the rest of the loop, like continue."),
    ("What is a virtual environment?", "A separate set of packages for one project",
     "python -m venv .venv", "It is a Python interpreter that runs in the cloud."),
    ("What is the GIL?", "A lock that lets one thread run Python code at a time",
     "from multiprocessing import Pool", "It makes threads run on every core at once."),
    ("What does break do?", "It leaves the innermost loop at once",
     "for x in xs:\n    if x < 0:\n        break", "break stops the whole program."),
    ("What is None?", "The value meaning no value; functions return it by default",
     "def f():\n    pass\nf() is None  # True", "None is the same as 0."),
]

# rating 1: answers that help nobody, each used about once (as in real rating data, no two alike)
RUDE = [
    "Read the docs.", "Google it.", "This is too basic, figure it out yourself.",
    "Why would anyone want to do that?", "Not my problem.", "Stop asking beginner questions.",
    "Ask someone who cares.", "Learn to code first.", "Seriously? Everybody knows this.",
    "Use another language, Python is slow anyway.", "Did you even try before asking?",
    "I'm not doing your homework for you.", "Wow, that is a lazy question.", "Search before you post, please.",
    "Come back when you have read a tutorial.", "This has been answered a thousand times.",
    "If you need to ask, programming is not for you.", "Nobody has time for this.",
    "Just copy it from somewhere, like everyone does.", "Ugh. Try harder.", "That question makes no sense.",
    "Figure it out, that is how you learn.", "What a waste of my time.", "Ask your teacher.", "RTFM.",
    "Go read a book.", "Who still asks this?", "Pretty sure a child could answer this.",
    "I'm not your personal tutor.", "Try a forum and stop bothering me.", "Obviously you did not read anything.",
    "Your question is the problem here.", "Do your own work.", "Are you serious right now?",
    "Just give up, honestly.", "Not answering that.", "You should know this already.",
    "Ask a chatbot or something.", "Whatever, it does not matter.", "Next question.", "That's a you problem.",
    "Look it up yourself.", "I can't believe people still ask this.", "Try thinking for once.",
    "Too easy, not worth my time.",
]
OFF_TOPIC = [
    "I like turtles.", "The weather is lovely today.", "Have you tried turning it off and on again?",
    "My favourite colour is blue.", "Pizza is best with pineapple.", "Cats sleep for most of the day.",
    "The train was late again this morning.", "Did you see the match last night?",
    "Bananas are berries, but strawberries are not.", "I am thinking about a holiday by the sea.",
    "My sister just got a new puppy.", "Coffee tastes better in the morning.",
    "The moon is slowly moving away from the Earth.", "I need to buy new shoes this week.",
    "Penguins cannot fly, but they swim fast.", "My neighbour plays the drums every night.",
    "The library closes early on Sundays.", "I watched a great film about sharks yesterday.",
    "Tomatoes grow well in the sun.", "Java has better tooling anyway.", "The mountains look beautiful in autumn.",
    "I forgot my umbrella again.", "Chess is a very old game.", "My phone battery dies so fast.",
    "Octopuses have three hearts.", "The bakery on my street makes great bread.", "I should really clean my desk.",
    "It might snow tomorrow.", "My favourite number is seven.", "Elephants never forget, they say.",
    "I started learning the guitar last month.", "The bus was full this morning.", "Honey never goes off.",
    "I prefer tea to coffee.", "The ocean covers most of the planet.", "My keyboard is missing a key.",
    "Football season starts next week.", "Sunflowers turn to face the sun.", "I had pasta for lunch.",
    "The museum has a new dinosaur.", "My plants need more water.", "Rain is good for the garden.",
    "I lost my keys again.", "A group of crows is called a murder.", "Summer is my favourite season.",
]

# -----------------------------------------------------------------------------

def indent(code):
    """Indent every line of code by 4 spaces (a function body)."""
    return "\n".join("    " + line for line in code.split("\n"))

def check():
    """Fail loudly if a 'good' answer is wrong or a 'wrong' answer is right."""
    for prompt, sig, doc, hint, good, wrong, test in DEFS:
        name = sig.split("(")[0]
        for body, should_pass in ((good, True), (wrong, False)):
            src = f"def {sig}:\n{indent(body)}\n"
            compile(src, name, "exec")
            if test is None:
                continue
            env = {}
            exec(src, env)
            try:
                ok = bool(eval(test, env))
            except Exception:
                ok = False
            assert ok == should_pass, f"{name}: {'good' if should_pass else 'wrong'} body fails its check"
    for expr, reason, wrong, wrong_reason in WHATS:
        assert repr(eval(expr)) != wrong, f"{expr}: the wrong value is right"
    assert len(set(RUDE)) == len(RUDE) and len(set(OFF_TOPIC)) == len(OFF_TOPIC), "a rating-1 answer repeats"

def cycle_shuffled(items, rng):
    """Yield items in a random order, reshuffling after each full pass, so none repeats before all are used."""
    while True:
        items = rng.sample(items, len(items))
        yield from items

def answers_for(kind, task, rng, unhelpful):
    """Return (prompt, {rating: [candidate responses]}) for one task of the given kind."""
    if kind == "def":
        prompt, sig, doc, hint, good, wrong, test = task
        answers = {
            5: [f'def {sig}:\n    """{doc}"""\n{indent(good)}'],
            4: [f"def {sig}:\n{indent(good)}"],
            3: [hint],
            2: [f'def {sig}:\n    """{doc}"""\n{indent(wrong)}'],
        }
    elif kind == "how":
        prompt, hint, code, wrong = task
        answers = {5: [f"{hint}:\n{code}"], 4: [code], 3: [f"{hint}."], 2: [wrong]}
    elif kind == "what":
        expr, reason, wrong, wrong_reason = task
        value = repr(eval(expr))  # the interpreter states the fact, so it cannot be wrong
        prompt = f"What does {expr} return?"
        answers = {
            5: [f"It returns {value}, because {reason}."],
            4: [value],
            3: [f"Think about it: {reason}."],
            2: [f"It returns {wrong}, because {wrong_reason}."],
        }
    else:  # explain
        prompt, explanation, example, wrong = task
        answers = {5: [f"{explanation}:\n{example}"], 4: [f"{explanation}."], 3: [example], 2: [wrong]}
    # the good answer cut off mid-way is as bad as a wrong one
    good = answers[5][0]
    answers[2].append(good[: rng.randint(len(good) * 3 // 10, len(good) * 6 // 10)])
    answers[1] = [next(unhelpful)]
    return prompt, answers

def make_rows(seed=1337):
    """Return the list of (prompt, response, rating) rows, the same for the same seed."""
    rng = random.Random(seed)
    unhelpful = cycle_shuffled(RUDE + OFF_TOPIC, rng)
    tasks = [("def", t) for t in DEFS] + [("how", t) for t in HOWS]
    tasks += [("what", t) for t in WHATS] + [("explain", t) for t in EXPLAINS]
    rows = []
    for kind, task in tasks:
        prompt, answers = answers_for(kind, task, rng, unhelpful)
        ratings = rng.sample([1, 2, 3, 4, 5], rng.choice([2, 3, 3, 4]))  # 2-4 different ratings
        for rating in ratings:
            rows.append((prompt, rng.choice(answers[rating]), rating))
    return rows

if __name__ == "__main__":
    check()
    rows = make_rows()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fine_tune_data.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)  # quotes fields with commas, quotes or newlines, as pandas expects
        writer.writerow(["prompt", "response", "rating"])
        writer.writerows(rows)
    n_prompts = len({r[0] for r in rows})
    per_rating = {k: sum(r[2] == k for r in rows) for k in range(1, 6)}
    print(f"wrote {len(rows)} rows for {n_prompts} prompts to {path}; rows per rating: {per_rating}")
